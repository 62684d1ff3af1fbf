"""A small real HTTP/1.1 receiver of CloudEvents batches on 127.0.0.1.

Used by ``andon-agent demo`` to show delivered events, and by the tests and benchmarks as the
upstream. ``respond`` decides the answer to each batch (status, headers), so a test can script a
receiver that is down, slow, or refuses some events. It keeps the last ``keep`` events and requests
(:data:`DEFAULT_KEEP`), so a demo left running for weeks does not grow; ``accepted`` counts them all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.ops.httpserver import HttpServer, Request, Response

Batch = list[dict[str, Any]]
MAX_BATCH_BYTES = 64 << 20
DEFAULT_KEEP = 10_000  # events (and requests) kept for inspection; the oldest go first


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow upstream)


Responder = Callable[[Batch, dict[str, str]], Reply | Awaitable[Reply]]


def accept_all(batch: Batch, headers: dict[str, str]) -> Reply:
    return Reply(200)


class Receiver:
    """``async with Receiver() as r:`` listens on ``r.url``; accepted events land in ``r.events``
    (the last ``keep`` of them; ``keep=None`` keeps all, for a benchmark that checks every id)."""

    def __init__(
        self,
        respond: Responder = accept_all,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/alerts",
        on_event: Callable[[dict[str, Any]], None] | None = None,
        keep: int | None = DEFAULT_KEEP,
    ) -> None:
        self.respond = respond
        self.path = path
        self.keep = keep
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[dict[str, str], Batch]] = []  # accepted or not
        self.accepted = 0  # events accepted in all
        self.on_event = on_event
        self.changed = asyncio.Condition()
        self._http = HttpServer(self._handle, host, port, max_body=MAX_BATCH_BYTES)

    @property
    def host(self) -> str:
        return self._http.host

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def running(self) -> bool:
        """Listening (``stop`` and ``start`` again on the same port: an upstream that goes away and comes back)."""
        return self._http.running

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], within: float = 10.0) -> None:
        """Wait until ``predicate(self.events)`` holds (raises TimeoutError otherwise)."""
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: predicate(self.events))

    async def _handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405)
        try:
            batch = json.loads(request.body)
            if not isinstance(batch, list):
                raise ValueError("not a JSON array")
        except ValueError:
            return Response(400)
        self.requests.append((request.headers, batch))
        self._trim(self.requests)
        reply = self.respond(batch, request.headers)
        if not isinstance(reply, Reply):
            reply = await reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        async with self.changed:
            if 200 <= reply.status < 300:
                self.events.extend(batch)
                self.accepted += len(batch)
                self._trim(self.events)
                if self.on_event:
                    for e in batch:
                        self.on_event(e)
            self.changed.notify_all()
        return Response(reply.status, headers=reply.headers)

    def _trim(self, kept: list[Any]) -> None:
        if self.keep is not None and len(kept) > self.keep:
            del kept[: len(kept) - self.keep]
