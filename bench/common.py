"""Pieces the latency benchmarks share: a simulated machine in its own process, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any


@dataclass(frozen=True)
class Measurement:
    change: float  # the machine's process: the new value is in place (monotonic, system-wide on Linux)
    committed: float  # agent: AlertLog.commit returned (synced to disk)
    received: float  # receiver: the event arrived


def pct(values: Sequence[float], p: int) -> float:
    """The p-th percentile (linear interpolation between the closest ranks)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


class RemoteProcess:
    """A server in a fresh interpreter (so it shares no event loop with the agent), driven over a pipe.

    ``target(conn, *args)`` runs in the child: it sends one message when it is ready, then answers
    each message it receives, and stops on ``None``.
    """

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop or threads
        self._conn, child = ctx.Pipe()
        self._child = child
        self._proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)

    async def start(self, within: float = 60.0) -> Any:
        """Start the process; returns its first message (e.g. its port)."""
        self._proc.start()
        self._child.close()  # so the child's death shows as EOF here
        async with asyncio.timeout(within):
            return await self._recv()

    async def ask(self, message: Any, within: float = 5.0) -> Any:
        self._conn.send(message)
        async with asyncio.timeout(within):
            return await self._recv()

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        await asyncio.to_thread(self._proc.join, 10.0)
        if self._proc.is_alive():
            self._proc.terminate()
            await asyncio.to_thread(self._proc.join, 5.0)
        self._conn.close()

    async def _recv(self) -> Any:
        """Wait for the pipe without blocking the agent's event loop, then read one message."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._conn.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        try:
            return self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self._proc.name} process ended (exit code {self._proc.exitcode})") from None


__all__ = ["Connection", "Measurement", "RemoteProcess", "pct"]
