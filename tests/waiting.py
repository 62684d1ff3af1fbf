"""Test helpers: awaitable conditions (no sleeping and polling where an event can be awaited), a
counting driver wrapper, and the whole agent run in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Self

from agent.config import Config, MachineBase
from agent.model import Sample
from agent.pipeline.supervisor import Agent
from drivers.base import Driver
from drivers.registry import make_driver

Machine = MachineBase


class Changes:
    """Call :meth:`bump` whenever something changed; ``await until(predicate)`` wakes on the change."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def bump(self, *_: Any) -> None:
        for predicate, fut in list(self._waiters):
            if not fut.done() and predicate():
                fut.set_result(None)

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        if predicate():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(within):
                await fut
        finally:
            self._waiters.remove(entry)


class CountingDriver:
    """Wraps a real driver: counts connections (``counts["<machine>.enter"]``) and reads that gave a
    good sample (``counts["<machine>"]``), and bumps ``changes`` after each."""

    def __init__(self, inner: Driver, machine: str, counts: dict[str, int], changes: Changes) -> None:
        self._inner, self._machine, self._counts, self._changes = inner, machine, counts, changes

    async def __aenter__(self) -> Self:
        key = f"{self._machine}.enter"
        self._counts[key] = self._counts.get(key, 0) + 1
        self._changes.bump()
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self._inner.__aexit__(t, e, tb)

    async def read(self) -> list[Sample]:
        samples = await self._inner.read()
        if any(s.good for s in samples):
            self._counts[self._machine] = self._counts.get(self._machine, 0) + 1
        self._changes.bump()
        return samples


def counting_factory(
    counts: dict[str, int], changes: Changes, drivers: Callable[[Machine], Driver] = make_driver
) -> Callable[[Machine], Driver]:
    return lambda m: CountingDriver(drivers(m), m.id, counts, changes)


@contextlib.asynccontextmanager
async def running_agent(cfg: Config, *, changes: Changes | None = None, **kw: Any) -> AsyncIterator[Agent]:
    """Run the whole agent in this event loop; on exit stop it and wait for a clean stop.

    ``changes`` is bumped on every committed event; ``kw`` goes to :class:`Agent`.
    """
    agent = Agent(cfg, observers=[changes.bump] if changes else [], **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    for ready in (agent.started, agent.surface.ready):  # the board and status listener start after the first polls
        await asyncio.wait({task, asyncio.ensure_future(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # it failed to start: raise why
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def running(cfg: Config, changes: Changes | None = None, reads: dict[str, int] | None = None) -> Any:
    """:func:`running_agent` with its drivers counted into ``reads`` (good reads per machine)."""
    changes = changes or Changes()
    return running_agent(cfg, changes=changes, driver_factory=counting_factory({} if reads is None else reads, changes))


def of(events: list[dict[str, Any]], subject: str, kind: str) -> list[dict[str, Any]]:
    """The events of one alert (``subject``) and one kind ("raised", "updated", "cleared")."""
    return [e for e in events if e["subject"] == subject and e["type"] == f"andon.alert.{kind}"]
