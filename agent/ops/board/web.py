"""The andon board's web server (Starlette on uvicorn): the page, its live updates,
acknowledgement, and the status endpoints, on one listener (``[status] listen``).

::

    GET  /                                  the board (static HTML, CSS and a small script)
    GET  /static/...                        its CSS and script
    GET  /api/board                         the board as JSON (agent.ops.board.view)
    GET  /api/events                        server-sent events: the board on connect and after each change
    GET  /api/machines/<id>/history.svg     the machine's alerts of the last 24 h as bars on a time line
    GET  /api/charts/<name>.svg             the usage charts (tool-life-<machine>, faults-<machine>), kept drawn
    POST /api/alerts/<machine>/<rule>[/<condition>]/ack    acknowledge (bearer token, JSON body)
    GET  /healthz /metrics /status          the status endpoints (agent.ops.status)

Live updates: :meth:`BoardServer.changed` (called on every commit; cheap, never blocks) schedules
one rendering of the board, shared by every open stream; a stream that cannot keep up skips to the
latest board instead of queueing. A check every few seconds catches changes that are not commits.

Security: acknowledgement needs the configured token (``Authorization: Bearer``, compared in
constant time, never logged), a JSON body of at most :data:`MAX_BODY` bytes, and a same-origin
request (``Sec-Fetch-Site`` and ``Origin`` are checked); the page is served with a strict
Content-Security-Policy and shows every text as text.

Why Starlette on uvicorn rather than aiohttp: measured on the development VM, importing it adds
about 3 MB and 70 ms to the agent, aiohttp's web server about 12 MB and 350 ms (it builds TLS
contexts for its client at import). uvicorn's own signal handling is switched off: the agent's
handlers stay in charge of SIGTERM, SIGINT and SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import OutboxError
from agent.ops.board.view import BoardAlert
from agent.ops.httpserver import Response as StatusResponse

log = logging.getLogger("andon.board")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 4096  # bytes of any request body (the acknowledgement's JSON is far smaller)
MAX_BY, MAX_NOTE = 80, 500  # characters of the acknowledgement's "by" and "note"
MAX_STREAMS = 100  # open event streams (boards); more get 503
KEEPALIVE = 15.0  # seconds between comments on an idle stream (proxies and dead peers)
CHECK_EVERY = 5.0  # seconds between checks for changes that are not commits (connections, lights)
RETRY_MS = 2000  # the browser reconnects this soon after a stream breaks

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class BoardSource(Protocol):
    """What the board reads from the running agent. Called on the event loop; must not block."""

    def view(self) -> dict[str, Any]:
        """The board now (:func:`agent.ops.board.view.board_view`)."""
        ...

    def alert(self, key: str) -> BoardAlert | None:
        """The active alert ``key``, or None."""
        ...

    async def acknowledge(self, key: str, by: str, note: str | None) -> bool:
        """Commit the acknowledgement; False if the alert is not active. May raise OutboxError."""
        ...

    def history_svg(self, machine: str) -> str | None:
        """The machine's time line, or None for a machine the board does not know."""
        ...

    def chart_svg(self, name: str) -> str | None:
        """A usage chart, or None when there is no such chart (yet)."""
        ...


StatusAnswer = Callable[[str, str], Awaitable[StatusResponse]]  # (method, path) -> the status endpoints' answer


# -- pure checks ---------------------------------------------------------------------------------


def cross_site(headers: Mapping[str, str], host: str) -> str | None:
    """Why a state-changing request must be refused as cross-site, or None if it is same-origin.

    Browsers send ``Sec-Fetch-Site``; older ones at least ``Origin`` on a POST. A request with
    neither (curl, a script on the gateway) is not a browser acting for another site.
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != host.lower():
            return "cross-site request refused (Origin does not match Host)"
    return None


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode(), token.encode())


def parse_ack(body: bytes) -> tuple[str, str | None]:
    """``{"by": "<who>", "note": "<text>"}`` (note optional) -> (by, note); ValueError says what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError('the body must be a JSON object: {"by": "<who>", "note": "<text>"}')
    unknown = sorted(set(doc) - {"by", "note"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}: only by and note")
    by, note = doc.get("by"), doc.get("note")
    if not isinstance(by, str) or not by.strip():
        raise ValueError('"by" must name who acknowledges')
    if len(by.strip()) > MAX_BY:
        raise ValueError(f'"by" is longer than {MAX_BY} characters')
    if note is not None and not isinstance(note, str):
        raise ValueError('"note" must be text')
    if note is not None and len(note) > MAX_NOTE:
        raise ValueError(f'"note" is longer than {MAX_NOTE} characters')
    note = note.strip() if note else None
    return by.strip(), note or None


def sse(event: str, data: str) -> bytes:
    """One server-sent event; ``data`` is one line of JSON."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def board_message(board: bytes, now: float) -> bytes:
    """The ``board`` event: the gateway's clock (ms, for the page's durations) and the board."""
    return sse("board", f'{{"now":{round(now * 1000)},"board":{board.decode()}}}')


# -- the server ------------------------------------------------------------------------------------


class TooLarge(Exception):
    """A request body over :data:`MAX_BODY`."""


@dataclass(eq=False)
class _Stream:
    latest: bytes = b""
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_bounded(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, or :class:`TooLarge` as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


class _SecurityHeaders:
    """ASGI middleware: the security headers on every answer (errors and static files included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handlers: the agent's own handle SIGTERM, SIGINT and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BoardServer:
    """Serves the board (and the status endpoints) on ``host:port`` (port 0: a free one).

    ``async with`` binds the port (an ``OSError`` if it cannot), starts and stops the server;
    stopping ends every open stream. ``token`` None: the board is read-only (no button, and the
    API answers 403).
    """

    def __init__(
        self,
        source: BoardSource,
        host: str,
        port: int,
        *,
        token: str | None = None,
        status: StatusAnswer | None = None,
        check_every: float = CHECK_EVERY,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._source = source
        self.host, self.port = host, port
        self._token = token
        self._status = status
        self._check_every = check_every
        self._keepalive = keepalive
        self._streams: set[_Stream] = set()
        self._pending = False
        self._last = b""
        self.version = 0  # boards sent after a change
        self._server: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def streams(self) -> int:
        return len(self._streams)

    def app(self) -> ASGIApp:
        ack = self._ack
        routes = [
            Route("/", self._page),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            Route("/api/board", self._board),
            Route("/api/events", self._events),
            Route("/api/machines/{machine}/history.svg", self._history),
            Route("/api/charts/{name}.svg", self._chart),
            Route("/api/alerts/{machine}/{rule}/ack", ack, methods=["POST"]),
            Route("/api/alerts/{machine}/{rule}/{condition}/ack", ack, methods=["POST"]),
            *(Route(path, self._status_endpoint) for path in ("/healthz", "/metrics", "/status")),
        ]
        return _SecurityHeaders(Starlette(routes=routes))

    async def __aenter__(self) -> BoardServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=128)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = server = _Uvicorn(config)
        self._last = self._encode()
        self._serving = asyncio.create_task(server.serve(sockets=[sock]), name="board:serve")
        while not server.started:  # startup on a bound socket takes a few milliseconds
            if self._serving.done():
                sock.close()
                self._serving.result()
                raise OSError(f"the board server on {self.host}:{self.port} did not start")
            await asyncio.sleep(0.005)
        self._checker = asyncio.create_task(self._check(), name="board:check")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        for stream in self._streams:
            stream.ready.set()
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await asyncio.wait({self._serving})
            self._server = None

    # -- live updates ------------------------------------------------------------------------

    def changed(self) -> None:
        """Something was committed: send the board to every stream soon (once for many changes)."""
        if not self._pending and not self._closing.is_set():
            self._pending = True
            asyncio.get_running_loop().call_soon(self._broadcast)

    def _encode(self) -> bytes:
        return json.dumps(self._source.view(), separators=(",", ":")).encode()

    def _broadcast(self) -> None:
        self._pending = False
        board = self._encode()
        if board == self._last:
            return
        self._last = board
        self.version += 1
        message = board_message(board, time.time())
        for stream in self._streams:
            stream.latest = message
            stream.ready.set()

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(self._check_every)
            try:
                self._broadcast()
            except Exception:  # a bug in a view must not end the checks
                log.exception("board: rendering failed")

    async def _events(self, request: Request) -> Response:
        if len(self._streams) >= MAX_STREAMS:
            return _error(503, f"too many open boards (at most {MAX_STREAMS})", **{"Retry-After": "10"})
        stream = _Stream(latest=board_message(self._last, time.time()))
        stream.ready.set()
        self._streams.add(stream)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(self._messages(stream), media_type="text/event-stream", headers=headers)

    async def _messages(self, stream: _Stream) -> AsyncIterator[bytes]:
        """One open board's messages; ends when the agent stops (the peer leaving cancels it)."""
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while not self._closing.is_set():
                try:
                    async with asyncio.timeout(self._keepalive):
                        await stream.ready.wait()
                except TimeoutError:  # the gateway's clock doubles as the keepalive
                    yield sse("time", str(round(time.time() * 1000)))
                    continue
                stream.ready.clear()
                if not self._closing.is_set():
                    yield stream.latest
        finally:
            self._streams.discard(stream)

    # -- pages and data ----------------------------------------------------------------------

    async def _page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    async def _board(self, request: Request) -> Response:
        return Response(self._encode(), media_type="application/json", headers={"Cache-Control": "no-store"})

    async def _history(self, request: Request) -> Response:
        svg = self._source.history_svg(request.path_params["machine"])
        if svg is None:
            return _error(404, "no such machine")
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    async def _chart(self, request: Request) -> Response:
        svg = self._source.chart_svg(request.path_params["name"])
        if svg is None:
            return _error(404, "no such chart")
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    async def _status_endpoint(self, request: Request) -> Response:
        if self._status is None:
            return _error(404, "not found")
        answer = await self._status(request.method, request.url.path)
        return Response(answer.body, answer.status, headers={"Content-Type": answer.content_type, **answer.headers})

    # -- acknowledgement -------------------------------------------------------------------------

    async def _ack(self, request: Request) -> Response:
        params = request.path_params
        key = "/".join(params[k] for k in ("machine", "rule", "condition") if k in params)
        refused = cross_site(request.headers, request.headers.get("host", ""))
        if refused:
            return _error(403, refused)
        if self._token is None:
            return _error(403, "acknowledgement is not configured on this gateway ([status] ack_token_env)")
        if not bearer_ok(request.headers.get("authorization"), self._token):
            return _error(401, "wrong or missing token", **{"WWW-Authenticate": 'Bearer realm="andon"'})
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "send the body as application/json")
        try:
            by, note = parse_ack(await read_bounded(request))
        except TooLarge:
            return _error(413, f"the body is larger than {MAX_BODY} bytes")
        except ValueError as exc:
            return _error(400, str(exc))
        return await self._acknowledge(key, by, note)

    async def _acknowledge(self, key: str, by: str, note: str | None) -> Response:
        alert = self._source.alert(key)
        if alert is None:
            return _error(404, f"alert {key} is not active")
        if alert.ack_at is not None:
            return _error(409, f"alert {key} is already acknowledged by {alert.ack_by}")
        try:
            done = await self._source.acknowledge(key, by, note)
        except OutboxError as exc:
            log.error("board: acknowledging %s failed: %s", key, exc)
            return _error(503, "the acknowledgement could not be stored; try again")
        if not done:
            return _error(404, f"alert {key} is not active")
        acked = self._source.alert(key)
        at = None if acked is None or acked.ack_at is None else round(acked.ack_at * 1000)
        return JSONResponse({"alert": key, "by": by, "note": note, "at": at})
