"""Awaitable conditions for tests: no sleeping and polling where an event can be awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from agent.config import ModbusMachine, OpcuaMachine
from agent.model import Sample
from drivers.base import Driver, make_driver


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
    """Wraps a real driver; counts reads per machine and bumps ``changes`` after each one."""

    def __init__(self, inner: Driver, machine: str, reads: dict[str, int], changes: Changes) -> None:
        self._inner, self._machine, self._reads, self._changes = inner, machine, reads, changes

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self._inner.__aexit__(t, e, tb)

    async def read(self) -> list[Sample]:
        samples = await self._inner.read()
        self._reads[self._machine] = self._reads.get(self._machine, 0) + 1
        self._changes.bump()
        return samples


def counting_factory(reads: dict[str, int], changes: Changes) -> Callable[[ModbusMachine | OpcuaMachine], Driver]:
    return lambda m: CountingDriver(make_driver(m), m.id, reads, changes)
