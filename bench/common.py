"""Pieces the latency benchmarks share: a simulated machine in its own process, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
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


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


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


__all__ = ["Connection", "Measurement", "RemoteProcess", "cpu_seconds", "pct"]


async def first_read(agent: Any, task: asyncio.Task[None], within: float) -> None:
    """Wait until the agent's first machine has been read once (the bench can then start changing)."""
    async with asyncio.timeout(within):
        while not agent.machines or agent.machines[0].status.reads == 0:
            if task.done():
                task.result()
                raise RuntimeError("the agent stopped before its first read")
            await asyncio.sleep(0.01)


async def change_and_catch(
    set_fault: Callable[[bool], Any],
    on: bool,
    arrivals: asyncio.Queue[tuple[float, dict[str, Any]]],
    subject: str,
    within: float,
    unexpected: list[dict[str, Any]],
) -> tuple[float, float, dict[str, Any]]:
    """Set the fault on or off and wait for its raised/cleared event: (change time, arrival time, event).

    Events that arrive meanwhile and are not the one awaited go to ``unexpected``.
    """
    want = "andon.alert.raised" if on else "andon.alert.cleared"
    while not arrivals.empty():  # nothing should arrive between two changes
        unexpected.append(arrivals.get_nowait()[1])
    change = float(await set_fault(on))
    async with asyncio.timeout(within):
        while True:
            received, event = await arrivals.get()
            if event["subject"] == subject and event["type"] == want:
                return change, received, event
            unexpected.append(event)
