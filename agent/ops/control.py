"""Local commands for the running agent: a UNIX socket, ``<state_dir>/control.sock``.

``andon-agent send-test`` asks the running agent through it to commit a test event and report each
sink's verdict, so that the command and the agent never work on one outbox at once. The socket is
made with mode 0660 in the state directory (0750, the agent's user): only root and the agent's user
and group can use it, with no token and no network port. One request per connection: a JSON object
on one line; the answer is a JSON object on one line (``{"error": "..."}`` when the request failed).
The handler is passed in, so this module knows nothing of the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("andon.control")

SOCKET = "control.sock"
MAX_REQUEST = 64 * 1024

Handler = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]


class ControlServer:
    """``async with ControlServer(path, handler):`` serves requests on the socket ``path``.

    Caller guarantees: no other live process serves on ``path`` (the agent holds the state
    directory's lock, :mod:`agent.pipeline.statelock`), so a file already there is a stale one.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ControlServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an agent that was killed
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(await reader.readline())
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away, or sent a line too long: nothing to answer
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> Mapping[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return {"error": f"bad request: {exc}"}
        try:
            return await self._handler(request)
        except Exception as exc:  # one bad request must not stop the agent
            log.exception("control request %s failed", request.get("command"))
            return {"error": f"{type(exc).__name__}: {exc}"}


async def ask(path: Path, request: Mapping[str, Any], *, within: float) -> Mapping[str, Any]:
    """Send one request to the running agent's control socket and return its answer.

    Raises OSError when nothing answers on ``path`` (no agent, or not allowed) and TimeoutError when
    no answer comes within ``within`` seconds.
    """
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REQUEST)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    answer = json.loads(line) if line else {"error": "the agent closed the connection without an answer"}
    if not isinstance(answer, dict):
        return {"error": "the agent's answer is not a JSON object"}
    return answer
