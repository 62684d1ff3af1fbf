"""A small HTTP/1.1 server on asyncio streams and h11, for the status endpoints.

``handler(request) -> Response`` is called for every request; connections are kept alive.
``stop()`` closes the listener and every open connection, and cancels handlers still running
(e.g. a test receiver that hangs on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

log = logging.getLogger("andon.http")
MAX_BODY = 1 << 20  # the default; a request with a larger body is dropped


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, *, max_body: int = MAX_BODY) -> None:
        self._handler = handler
        self.host, self.port = host, port
        self._max_body = max_body
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._conns):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await _read_request(conn, reader, self._max_body)) is not None:
                try:
                    response = await self._handler(request)
                except Exception:
                    log.exception("%s %s failed", request.method, request.path)
                    response = Response(500, b"internal error\n")
                headers = [("content-type", response.content_type), ("content-length", str(len(response.body)))]
                headers += list(response.headers.items())
                writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=response.body)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # stopped: end the connection quietly (3.11 logs a cancelled handler)
            return
        finally:
            self._conns.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader, max_body: int) -> Request | None:
    head: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data and head is None:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                return None
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = {k.decode().lower(): v.decode(errors="replace") for k, v in head.headers}
            return Request(head.method.decode(), head.target.decode(errors="replace"), headers, body)
        else:  # ConnectionClosed, or a message without a request line
            return None
