"""A small real HTTP/1.1 receiver of CloudEvents batches on 127.0.0.1.

Used by ``andon-agent demo`` to show delivered events, and by the tests and benchmarks as the
upstream. ``respond`` decides the answer to each batch (status, headers), so a test can script a
receiver that is down, slow, or refuses some events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

Batch = list[dict[str, Any]]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow upstream)


Responder = Callable[[Batch, dict[str, str]], Reply | Awaitable[Reply]]


def accept_all(batch: Batch, headers: dict[str, str]) -> Reply:
    return Reply(200)


class Receiver:
    """``async with Receiver() as r:`` listens on ``r.url``; accepted events land in ``r.events``."""

    def __init__(
        self,
        respond: Responder = accept_all,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/alerts",
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.respond = respond
        self.host, self.port, self.path = host, port, path
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[dict[str, str], Batch]] = []  # every request, accepted or not
        self.on_event = on_event
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            for task in list(self._handlers):  # e.g. a reply that hangs on purpose
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], within: float = 10.0) -> None:
        """Wait until ``predicate(self.events)`` holds (raises TimeoutError otherwise)."""
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: predicate(self.events))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                reply = await self._handle(request, headers, body)
                out = [(k, v) for k, v in reply.headers.items()] + [("content-length", "0")]
                writer.write(conn.send(h11.Response(status_code=reply.status, headers=out)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # stopped: end the connection quietly (3.11 logs a cancelled handler)
            return
        finally:
            self._conns.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    @staticmethod
    async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _handle(self, request: h11.Request, headers: dict[str, str], body: bytes) -> Reply:
        if request.method != b"POST":
            return Reply(405)
        try:
            batch = json.loads(body)
            if not isinstance(batch, list):
                raise ValueError("not a JSON array")
        except ValueError:
            return Reply(400)
        self.requests.append((headers, batch))
        reply = self.respond(batch, headers)
        if not isinstance(reply, Reply):
            reply = await reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        async with self.changed:
            if 200 <= reply.status < 300:
                self.events.extend(batch)
                if self.on_event:
                    for e in batch:
                        self.on_event(e)
            self.changed.notify_all()
        return reply
