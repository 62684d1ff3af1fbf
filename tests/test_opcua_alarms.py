"""OPC UA alarms, driver side: real condition nodes on the session's asyncua server -> ConditionEvents.

Each test makes its own conditions (under its own source object) on the shared server and looks
only at those, so tests sharing the server do not see each other's alarms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asyncua import ua

from agent.config import parse_config
from agent.errors import DriverError
from agent.model import ConditionEvent
from drivers.opcua import OpcuaDriver
from drivers.opcua.config import OpcuaMachine
from drivers.opcua.sim import SimCondition
from tests.opcua_fixtures import NS_URI, OpcuaSim

_serial = itertools.count(1)


def opcua_machine(sim: OpcuaSim, **extra: Any) -> OpcuaMachine:
    doc: dict[str, Any] = {
        "id": "m1",
        "protocol": "opcua",
        "endpoint": sim.endpoint,
        "mode": "poll",
        "poll_interval": "50ms",
        "offline_after": "1s",
        "timeout": "1s",
        "signals": [{"id": "wear", "node": sim.node_id("Poll.Wear")}],
    }
    doc.update(extra)
    machine = parse_config({"machines": [doc]}).machines[0]
    assert isinstance(machine, OpcuaMachine)
    return machine


async def make_source(sim: OpcuaSim, *names: str) -> tuple[str, list[SimCondition]]:
    """A new source object (a unique name per call) with one OffNormalAlarm per name."""
    source_name = f"Unit{next(_serial)}"
    source = await sim.server.nodes.objects.add_object(ua.NodeId(source_name, sim.ns), source_name)  # type: ignore[arg-type]
    conditions = [
        await SimCondition.create(sim.server, source, name, ua.NodeId(f"{source_name}.{name}", sim.ns))  # type: ignore[arg-type]
        for name in names
    ]
    return source_name, conditions


class Stream:
    """The driver's condition events for one source, collected by a background task."""

    def __init__(self, driver: OpcuaDriver, source: str, notifiers: list[str]) -> None:
        self.source = source
        self.events: list[ConditionEvent] = []
        self.changed = asyncio.Condition()
        self.done = False
        self._task = asyncio.create_task(self._collect(driver, notifiers))

    async def _collect(self, driver: OpcuaDriver, notifiers: list[str]) -> None:
        try:
            async for batch in driver.conditions(notifiers):
                async with self.changed:
                    self.events += [e for e in batch if e.kind != "condition" or e.source == self.source]
                    self.changed.notify_all()
        finally:
            async with self.changed:
                self.done = True
                self.changed.notify_all()

    async def wait_for(self, count: int) -> list[ConditionEvent]:
        async with asyncio.timeout(5.0), self.changed:
            await self.changed.wait_for(lambda: len(self.events) >= count or self.done)
        if self.done:
            await self._task  # raises what ended it
        return self.events[:count]

    async def close(self) -> None:
        """Stop collecting (what ended the stream, if anything did, is for :meth:`wait_for` to report)."""
        self._task.cancel()
        await asyncio.wait({self._task})


@contextlib.asynccontextmanager
async def streaming(
    sim: OpcuaSim, source: str, notifiers: list[str] | None = None, **extra: Any
) -> AsyncIterator[Stream]:
    async with OpcuaDriver(opcua_machine(sim, **extra)) as driver:
        stream = Stream(driver, source, notifiers or ["i=2253"])
        try:
            yield stream
        finally:
            await stream.close()


def conditions_of(events: list[ConditionEvent]) -> list[tuple[str, bool, int, str]]:
    return [(e.name, e.active, e.severity, e.message) for e in events if e.kind == "condition"]


async def test_raise_change_clear_arrive_as_condition_events(opcua: OpcuaSim) -> None:
    source, (overheat,) = await make_source(opcua, "Overheat")
    async with streaming(opcua, source) as stream:
        refresh = await stream.wait_for(2)  # nothing of ours is retained yet: an empty refresh
        assert [e.kind for e in refresh] == ["refresh_start", "refresh_end"]
        await overheat.activate(800, "Spindle too hot")
        await overheat.change(severity=900)
        await overheat.change(message="Spindle much too hot")
        await overheat.clear()
        events = (await stream.wait_for(6))[2:]
    assert conditions_of(events) == [
        ("Overheat", True, 800, "Spindle too hot"),
        ("Overheat", True, 900, "Spindle too hot"),
        ("Overheat", True, 900, "Spindle much too hot"),
        ("Overheat", False, 900, "Spindle much too hot"),
    ]
    first = events[0]
    assert first.source == source and first.notifier == "i=2253" and first.machine == "m1"
    assert first.condition_id == f"nsu={NS_URI};s={source}.Overheat"  # by namespace URI
    assert first.retain and not events[-1].retain


async def test_connect_refreshes_the_retained_conditions(opcua: OpcuaSim) -> None:
    """ConditionRefresh on connect: active and unacknowledged conditions come between the markers."""
    source, (door, oil, fan) = await make_source(opcua, "DoorOpen", "OilLow", "FanFault")
    await door.activate(500, "Door open")
    await oil.activate(200, "Oil low")
    await oil.clear(acknowledged=False)  # inactive, but retained until acknowledged
    await fan.activate(900, "Fan fault")
    await fan.clear()  # inactive and acknowledged: no longer retained
    async with streaming(opcua, source) as stream:
        events = await stream.wait_for(4)
    assert events[0].kind == "refresh_start" and events[-1].kind == "refresh_end"
    assert sorted(conditions_of(events)) == [("DoorOpen", True, 500, "Door open"), ("OilLow", False, 200, "Oil low")]
    await door.clear()


async def test_a_source_other_than_the_server_object(opcua: OpcuaSim) -> None:
    """Events of a condition whose notifier is its own source object; asyncua's server sends the
    refresh markers only to monitored items on the Server object, so none come here."""
    source_name = f"Unit{next(_serial)}"
    source = await opcua.server.nodes.objects.add_object(ua.NodeId(source_name, opcua.ns), source_name)  # type: ignore[arg-type]
    cond = await SimCondition.create(
        opcua.server,
        source,
        "Jam",
        ua.NodeId(f"{source_name}.Jam", opcua.ns),  # type: ignore[arg-type]
        notifier=source.nodeid,
    )
    notifier = f"nsu={NS_URI};s={source_name}"
    async with streaming(opcua, source_name, [notifier]) as stream:
        await asyncio.sleep(0.2)  # give the subscription time to be made before the event
        await cond.activate(700, "Feeder jammed")
        (event,) = [e for e in await stream.wait_for(1) if e.kind == "condition"]
    assert (event.notifier, event.name, event.active, event.severity) == (notifier, "Jam", True, 700)


async def test_a_source_the_server_does_not_have_is_a_driver_error(opcua: OpcuaSim) -> None:
    async with streaming(opcua, "none", [f"nsu={NS_URI};s=NoSuchArea"]) as stream:
        with pytest.raises(DriverError, match=r"alarms: source nsu=.*NoSuchArea: the server refuses its events"):
            await stream.wait_for(1)
    async with streaming(opcua, "none", ["nsu=urn:nobody;s=X"]) as stream:
        with pytest.raises(DriverError, match="the server has no such namespace"):
            await stream.wait_for(1)
