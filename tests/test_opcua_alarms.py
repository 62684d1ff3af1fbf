"""OPC UA alarms, driver side: real condition nodes on the session's asyncua server -> ConditionEvents.

Each test makes its own conditions (under its own source object) on the shared server and looks
only at those, so tests sharing the server do not see each other's alarms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asyncua import ua

from agent.config import Config, parse_config
from agent.demo.receiver import Receiver
from agent.errors import DriverError
from agent.model import ConditionEvent
from drivers.opcua import OpcuaDriver
from drivers.opcua.config import OpcuaMachine
from drivers.opcua.sim import SimCondition
from tests.opcua_fixtures import NS_URI, OpcuaSim
from tests.waiting import running_agent

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


# -- the whole agent: an alarms rule, a real receiver -------------------------------------------------


def alarms_config(sim: OpcuaSim, tmp_path: Path, url: str, status: dict[str, Any] | None = None, **rule: Any) -> Config:
    return parse_config(
        {
            "agent": {"gateway_id": "gw-test", "site": "lab", "state_dir": str(tmp_path / "state")},
            "machines": [
                {
                    "id": "mill",
                    "protocol": "opcua",
                    "endpoint": sim.endpoint,
                    "poll_interval": "50ms",
                    "offline_after": "1s",
                    "timeout": "1s",
                    "reconnect_max": "300ms",
                    "signals": [{"id": "wear", "node": sim.node_id("Agent.Wear")}],
                }
            ],
            "rules": [{"id": "alarms", "machine": "mill", "kind": "alarms", **rule}],
            "sinks": [{"id": "up", "kind": "http", "url": url, "timeout": "2s", "retry_max": "300ms"}],
            "status": status or {"listen": None},
        }
    )


def alerts_of(events: list[dict[str, Any]], source: str) -> list[tuple[str, str]]:
    """(type, subject) of the alarm events of one source, in order."""
    prefix = f"mill/alarms/{source}."
    return [(e["type"].rsplit(".", 1)[1], e["subject"]) for e in events if e["subject"].startswith(prefix)]


async def test_agent_forwards_each_alarm_as_its_own_alert(opcua: OpcuaSim, tmp_path: Path, receiver: Receiver) -> None:
    source, (overheat, lube) = await make_source(opcua, "Overheat", "Lube low")
    key, lube_key = f"mill/alarms/{source}.Overheat", f"mill/alarms/{source}.Lube_low"
    try:
        async with running_agent(alarms_config(opcua, tmp_path, receiver.url)):
            await overheat.activate(800, "Spindle too hot")
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 1)
            await lube.activate(400, "Lube level low")
            await overheat.change(severity=900, message="Spindle much too hot")
            await overheat.acknowledge()  # an event, but nothing changed for the alert
            await overheat.clear(message="Spindle temperature normal")
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 4)
    finally:
        await lube.clear()
    assert alerts_of(receiver.events, source) == [
        ("raised", key),
        ("raised", lube_key),
        ("updated", key),
        ("cleared", key),
    ]
    raised = next(e for e in receiver.events if e["subject"] == key)
    data = raised["data"]
    assert (data["alert"], data["machine"], data["rule"], data["signal"]) == (key, "mill", "alarms", None)
    assert (data["severity"], data["value"], data["message"]) == ("critical", 800, "Spindle too hot")
    assert (data["condition"], data["source"], data["threshold"]) == ("Overheat", source, None)
    assert data["condition_id"] == f"nsu={NS_URI};s={source}.Overheat"
    updated, cleared = [e["data"] for e in receiver.events if e["subject"] == key][1:]
    assert (updated["value"], updated["message"]) == (900, "Spindle much too hot")
    assert (cleared["message"], cleared["severity"]) == ("Spindle temperature normal", "critical")
    assert next(e for e in receiver.events if e["subject"] == lube_key)["data"]["severity"] == "warning"


async def test_min_severity_filters_the_noise(opcua: OpcuaSim, tmp_path: Path, receiver: Receiver) -> None:
    source, (note, fault) = await make_source(opcua, "Note", "Fault")
    try:
        async with running_agent(alarms_config(opcua, tmp_path, receiver.url, min_severity=300)):
            await note.activate(100, "Filter due soon")
            await fault.activate(700, "Drive fault")
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 1)
    finally:
        await note.clear()
        await fault.clear()
    assert alerts_of(receiver.events, source) == [("raised", f"mill/alarms/{source}.Fault")]


async def test_restart_reconciles_with_the_refresh(opcua: OpcuaSim, tmp_path: Path, receiver: Receiver) -> None:
    """Stopped with A and C active; meanwhile A ends and B starts. After the restart the refresh
    brings B (raised) and C (already active: nothing), and A, not reported, is cleared."""
    source, (a, b, c) = await make_source(opcua, "A", "B", "C")
    cfg = alarms_config(opcua, tmp_path, receiver.url)
    try:
        await a.activate(500, "a")
        await c.activate(900, "c")
        async with running_agent(cfg):  # the first refresh brings A and C
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 2)
        await a.clear()
        await b.activate(200, "b")
        async with running_agent(cfg):
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 4)
            await c.change(message="c again")  # the restored alert adopted C: a change is an update
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 5)
    finally:
        for cond in (a, b, c):
            await cond.clear()
    key = f"mill/alarms/{source}."
    events = alerts_of(receiver.events, source)
    assert sorted(events[:2]) == [("raised", key + "A"), ("raised", key + "C")]
    assert sorted(events[2:4]) == [("cleared", key + "A"), ("raised", key + "B")]
    assert events[4] == ("updated", key + "C")
    cleared_a = next(e for e in receiver.events if e["subject"] == key + "A" and e["type"].endswith("cleared"))
    assert "no longer active" in cleared_a["data"]["message"]


async def test_reconnect_refreshes_and_clears_what_ended_during_the_outage(
    opcua: OpcuaSim, tmp_path: Path, receiver: Receiver
) -> None:
    source, (door,) = await make_source(opcua, "Door")
    key = f"mill/alarms/{source}.Door"
    try:
        async with running_agent(alarms_config(opcua, tmp_path, receiver.url)):
            await door.activate(600, "Door open")
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 1)
            await opcua.stop()
            await receiver.wait_for(lambda ev: any(e["subject"] == "mill/offline" for e in ev))
            await door.clear()  # while the agent cannot hear it
            await opcua.start()
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 2)
    finally:
        await door.clear()
    assert alerts_of(receiver.events, source) == [("raised", key), ("cleared", key)]
    subjects = [e["subject"] for e in receiver.events]
    assert subjects.index("mill/offline") < len(subjects) - 1  # the outage was seen as one


async def test_flood_gate_holds_a_burst_of_alarms(opcua: OpcuaSim, tmp_path: Path, receiver: Receiver) -> None:
    names = [f"Axis{i}" for i in range(6)]
    source, conditions = await make_source(opcua, *names)
    cfg = alarms_config(opcua, tmp_path, receiver.url)
    cfg = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"flood_count": 3, "flood_window": 60.0})})
    try:
        async with running_agent(cfg):
            for cond in conditions:
                await cond.activate(700, "axis drive fault")
            await receiver.wait_for(lambda ev: any(e["subject"] == "mill/flood" for e in ev))
    finally:
        for cond in conditions:
            await cond.clear()
    assert len(alerts_of(receiver.events, source)) == 3  # the rest is held and summarised
    flood = next(e for e in receiver.events if e["subject"] == "mill/flood")
    assert flood["data"]["severity"] == "critical"


async def test_a_condition_alert_on_status_board_and_acknowledged(
    opcua: OpcuaSim, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three-part key everywhere an alert key is used: /status, the board, its acknowledgement."""
    monkeypatch.setenv("ANDON_ALARMS_ACK", "ack-token-alarms")
    source, (jam,) = await make_source(opcua, "Jam")
    key = f"mill/alarms/{source}.Jam"
    status = {"listen": "127.0.0.1:0", "ack_token_env": "ANDON_ALARMS_ACK"}
    try:
        async with running_agent(alarms_config(opcua, tmp_path, receiver.url, status)) as agent:
            await jam.activate(700, "Feeder jammed")
            await receiver.wait_for(lambda ev: len(alerts_of(ev, source)) == 1)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.status_port}") as http:
                alerts = (await http.get("/status")).json()["alerts"]
                assert [a["alert"] for a in alerts if a["alert"].startswith("mill/alarms/")] == [key]
                board = (await http.get("/api/board")).json()
                shown = [a for m in board["machines"] for a in m["alerts"] if a["alert"] == key]
                assert len(shown) == 1 and shown[0]["severity"] == "critical"
                r = await http.post(
                    f"/api/alerts/{key}/ack",
                    headers={"Authorization": "Bearer ack-token-alarms"},
                    json={"by": "Ana"},
                )
                assert r.status_code == 200, r.text
            await receiver.wait_for(lambda ev: any(e["type"] == "andon.alert.acknowledged" for e in ev))
    finally:
        await jam.clear()
    (acked,) = [e for e in receiver.events if e["type"] == "andon.alert.acknowledged"]
    assert (acked["subject"], acked["data"]["alert"], acked["data"]["by"]) == (key, key, "Ana")
