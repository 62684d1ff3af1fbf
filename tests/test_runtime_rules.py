"""The new rule kinds through the whole agent: simulated PLC -> rules -> outbox -> real HTTP receiver.

Plus the rule tick (time-based behaviour without new samples, as with OPC UA subscriptions) and
the flood gate, with a push driver fed from the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Self

from agent.config import Config, MachineBase
from agent.demo.receiver import Receiver
from agent.model import Quality, Sample
from agent.pipeline.runner import Clock
from agent.pipeline.supervisor import Agent
from drivers.modbus.sim import SimulatedMachine
from tests.conftest import machine_doc
from tests.waiting import of, running

SIGNALS = [
    {"id": "fault_code", "register": "holding", "address": 20, "type": "uint16"},
    {"id": "strokes", "register": "holding", "address": 21, "type": "uint16", "unit": "strokes"},
]
RULES = [
    {
        "id": "code",
        "machine": "m1",
        "signal": "fault_code",
        "kind": "code",
        "codes": {"12": {"message": "Spindle overload", "severity": "critical"}, "31": {"message": "Coolant low"}},
    },
    {
        "id": "punch",
        "machine": "m1",
        "signal": "strokes",
        "kind": "tool_life",
        "name": "punch 3",
        "limit": 1000,
        "warning_remaining": 100,
    },
]


async def test_code_and_tool_life_through_the_agent(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(machine.port, receiver.url, machines=[machine_doc("m1", machine.port, SIGNALS)], rules=RULES)
    async with running(cfg):
        await machine.set("holding", 20, [12])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "raised")) == 1)
        await machine.set("holding", 20, [31])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "updated")) == 1)
        await machine.set("holding", 20, [0])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "cleared")) == 1)
        await machine.set("holding", 21, [950])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "raised")) == 1)
        await machine.set("holding", 21, [1000])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "updated")) == 1)
        await machine.set("holding", 21, [3])  # the tool was changed
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "cleared")) == 1)

    raised = of(receiver.events, "m1/code", "raised")[0]["data"]
    assert (raised["code"], raised["code_text"], raised["severity"], raised["value"]) == (
        12,
        "Spindle overload",
        "critical",
        12,
    )
    assert "fault 12" in raised["message"] and "Spindle overload" in raised["message"]
    updated = of(receiver.events, "m1/code", "updated")[0]["data"]
    assert (updated["code"], updated["severity"]) == (31, "warning")
    warned = of(receiver.events, "m1/punch", "raised")[0]["data"]
    assert (warned["remaining"], warned["severity"], warned["threshold"]) == (50, "warning", 900)
    assert warned["message"].startswith("punch 3 on m1 has 50 strokes of tool life left")
    assert of(receiver.events, "m1/punch", "updated")[0]["data"]["remaining"] == 0
    assert of(receiver.events, "m1/punch", "cleared")[0]["data"]["remaining"] == 997
    (changed,) = [e for e in receiver.events if e["type"] == "andon.tool.changed"]  # the usage fold's event
    assert changed["subject"] == "m1/punch"
    assert (changed["data"]["life_used"], changed["data"]["limit"], changed["data"]["life_fraction"]) == (1000, 1000, 1)
    kinds = [(e["type"].rsplit(".", 1)[1], e["subject"]) for e in receiver.events]
    assert kinds == [
        ("raised", "m1/code"),
        ("updated", "m1/code"),
        ("cleared", "m1/code"),
        ("raised", "m1/punch"),
        ("updated", "m1/punch"),
        ("cleared", "m1/punch"),
        ("changed", "m1/punch"),  # the tool change (the usage fold), committed with the clear
    ]


class FedDriver:
    """A push driver (like an OPC UA subscription) that delivers only what the test puts in its queue."""

    def __init__(self, queue: asyncio.Queue[list[Sample]]) -> None:
        self.queue = queue

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def read(self) -> list[Sample]:  # pragma: no cover - the runtime iterates updates()
        raise NotImplementedError

    async def updates(self) -> AsyncIterator[list[Sample]]:
        while True:
            yield await self.queue.get()
            self.queue.task_done()  # the runtime has handled it: queue.join() wakes when all are


def fed(queue: asyncio.Queue[list[Sample]]) -> Callable[[MachineBase], FedDriver]:
    return lambda m: FedDriver(queue)


def value(signal: str, v: Any) -> list[Sample]:
    import time

    return [Sample("m1", signal, v, Quality.GOOD, time.time())]


async def test_time_based_rules_need_no_new_samples(
    receiver: Receiver, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    signals = [{"id": "wear", "address": 0, "unit": "%"}, {"id": "counter", "address": 1}]
    rules = [
        {"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80, "off_delay": "300ms"},
        {"id": "frozen", "machine": "m1", "signal": "counter", "kind": "stale", "after": "400ms"},
    ]
    cfg = make_config(
        unused_tcp_port, receiver.url, machines=[machine_doc("m1", 1, signals, offline_after="60s")], rules=rules
    )
    queue: asyncio.Queue[list[Sample]] = asyncio.Queue()
    agent = Agent(cfg, driver_factory=fed(queue))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        queue.put_nowait(value("wear", 85.0) + value("counter", 7))
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "raised")) == 1)
        queue.put_nowait(value("wear", 10.0))  # the last sample: the off-delay must expire on the clock
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "cleared")) == 1)
        # the counter never changed after its one sample: stale, on the clock alone
        await receiver.wait_for(lambda ev: len(of(ev, "m1/frozen", "raised")) == 1)
        queue.put_nowait(value("counter", 8))
        await receiver.wait_for(lambda ev: len(of(ev, "m1/frozen", "cleared")) == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    frozen = of(receiver.events, "m1/frozen", "raised")[0]["data"]
    assert frozen["value"] == 7 and frozen["unchanged_seconds"] >= 0
    assert of(receiver.events, "m1/wear", "cleared")[0]["data"]["value"] == 10.0


async def test_a_flooding_machine_is_summarised(
    receiver: Receiver, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    signals = [{"id": f"f{i}", "address": i} for i in range(6)]
    rules = [{"id": f"f{i}", "machine": "m1", "signal": f"f{i}", "kind": "fault", "chatter_count": 0} for i in range(6)]
    cfg = make_config(
        unused_tcp_port,
        receiver.url,
        machines=[machine_doc("m1", 1, signals, offline_after="60s")],
        rules=rules,
        alerts={"flood_count": 3, "flood_window": "2s"},
    )
    queue: asyncio.Queue[list[Sample]] = asyncio.Queue()
    agent = Agent(cfg, driver_factory=fed(queue))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for i in range(6):  # six faults at once: three go out, the rest is summarised
            queue.put_nowait(value(f"f{i}", 1))
        queue.put_nowait(value("f0", 0))  # held too
        await receiver.wait_for(lambda ev: len(of(ev, "m1/flood", "raised")) == 1)
        # two seconds later the machine is calm: the flood clears and each held alert is brought up to date
        await receiver.wait_for(lambda ev: len(of(ev, "m1/flood", "cleared")) == 1, within=15)
        # 3 raised, the flood raised (maybe updated with the count), the flood cleared, 1 cleared + 3 raised
        await receiver.wait_for(lambda ev: len([e for e in ev if e["subject"] != "m1/flood"]) == 3 + 4)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    updates = of(receiver.events, "m1/flood", "updated")
    events = [e for e in receiver.events if e not in updates]
    kinds = [(e["subject"], e["type"].rsplit(".", 1)[1]) for e in events]
    assert kinds[:3] == [("m1/f0", "raised"), ("m1/f1", "raised"), ("m1/f2", "raised")]
    assert kinds[3] == ("m1/flood", "raised")
    flood = events[3]["data"]
    assert flood["signal"] is None and flood["severity"] == "critical" and flood["held_alerts"] == ["m1/f3"]
    assert len(updates) <= 1
    cleared_at = kinds.index(("m1/flood", "cleared"))
    assert sorted(kinds[cleared_at + 1 :]) == [
        ("m1/f0", "cleared"),
        ("m1/f3", "raised"),
        ("m1/f4", "raised"),
        ("m1/f5", "raised"),
    ]
    assert events[cleared_at]["data"]["held_events"] == 4
    assert events[cleared_at]["data"]["held_alerts"] == ["m1/f0", "m1/f3", "m1/f4", "m1/f5"]


async def test_forecast_through_the_agent(
    receiver: Receiver, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    """A wear ramp in simulated time (the agent's clock is the test's): warned ten minutes ahead."""
    signals = [{"id": "wear", "address": 0, "unit": "%"}]
    rules = [
        {"id": "due", "machine": "m1", "signal": "wear", "kind": "forecast", "name": "tool 1", "limit": 95}
        | {"horizon": "10m", "window": "5m"},
    ]
    machine = machine_doc("m1", 1, signals, offline_after="1h")
    cfg = make_config(unused_tcp_port, receiver.url, machines=[machine], rules=rules)
    now = [0.0]
    t0 = 1_700_000_000.0
    queue: asyncio.Queue[list[Sample]] = asyncio.Queue()
    agent = Agent(cfg, driver_factory=fed(queue), clock=Clock(wall=lambda: t0 + now[0], monotonic=lambda: now[0]))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for i in range(41):  # 50 % rising 0.05 %/s, a reading every 10 s: 95 % is reached at 900 s
            now[0] = i * 10.0
            queue.put_nowait([Sample("m1", "wear", 50 + 0.05 * now[0], Quality.GOOD, t0 + now[0])])
            await queue.join()
        await receiver.wait_for(lambda ev: len(of(ev, "m1/due", "raised")) == 1)
        now[0] = 410.0
        queue.put_nowait([Sample("m1", "wear", 1.0, Quality.GOOD, t0 + now[0])])  # a new tool
        await receiver.wait_for(lambda ev: len(of(ev, "m1/due", "cleared")) == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    raised = of(receiver.events, "m1/due", "raised")[0]
    assert raised["time"] == "2023-11-14T22:18:20.000Z"  # t0 + 300 s: the limit is then 600 s away
    assert raised["data"]["seconds_to_limit"] == 600 and raised["data"]["threshold"] == 95
    assert raised["data"]["message"].startswith("tool 1 on m1 reaches 95% in about 10 min (now 65%")


# -- a restart keeps every active alert as it is (issue 12, defect 3) ----------------------------

RESTART_SIGNALS = [
    {"id": "wear", "address": 0, "unit": "%"},
    {"id": "fault", "address": 1},
    {"id": "fault_code", "address": 2},
    {"id": "strokes", "address": 3},
    {"id": "ramp", "address": 4, "unit": "%"},
    {"id": "counter", "address": 5},
    {"id": "door", "address": 6},
]
RESTART_RULES: list[dict[str, Any]] = [
    {"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80, "deadband": 5},
    {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault"},
    {"id": "code", "machine": "m1", "signal": "fault_code", "kind": "code"},
    {"id": "punch", "machine": "m1", "signal": "strokes", "kind": "tool_life", "limit": 1000, "warning_remaining": 100},
    {"id": "due", "machine": "m1", "signal": "ramp", "kind": "forecast", "limit": 95, "horizon": "10m", "window": "5m"},
    {"id": "frozen", "machine": "m1", "signal": "counter", "kind": "stale", "after": "60s"},
    # raised three times within a minute: chattering, held active although its condition is gone
    {"id": "door", "machine": "m1", "signal": "door", "kind": "fault", "chatter_count": 3, "chatter_window": "20m"},
]
T0 = 1_700_000_000.0


def readings(t: float, **over: Any) -> list[Sample]:
    """One poll of every signal at simulated time ``t``: the forecast's ramp rises 0.05 %/s, the rest holds."""
    values: dict[str, Any] = {"wear": 82.0, "fault": 1, "fault_code": 12, "strokes": 950, "counter": 7, "door": 0}
    values |= {"ramp": 50 + 0.05 * t} | over
    return [Sample("m1", s, v, Quality.GOOD, T0 + t) for s, v in values.items()]


class SimClock:
    """The agent's clock in simulated time; a new one per run (a restart: its monotonic clock starts anew)."""

    def __init__(self, wall: float, monotonic: float) -> None:
        self.wall, self.mono = wall, monotonic

    def clock(self) -> Clock:
        return Clock(wall=lambda: T0 + self.wall, monotonic=lambda: self.mono)

    def to(self, t: float) -> None:
        self.mono += t - self.wall
        self.wall = t


async def feed(agent: Agent, queue: asyncio.Queue[list[Sample]], sim: SimClock, times: range, **over: Any) -> None:
    for t in times:
        sim.to(float(t))
        queue.put_nowait(readings(float(t), **over))
        await queue.join()  # the runner has judged it (and committed what it raised)


async def test_a_restart_neither_clears_nor_raises_again_an_active_alert_of_any_kind(
    receiver: Receiver, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    machine = machine_doc("m1", 1, RESTART_SIGNALS, offline_after="1h")
    cfg = make_config(unused_tcp_port, receiver.url, machines=[machine], rules=RESTART_RULES, alerts={"flood_count": 0})
    keys = {f"m1/{r['id']}" for r in RESTART_RULES}

    queue: asyncio.Queue[list[Sample]] = asyncio.Queue()
    sim = SimClock(0.0, 1000.0)
    agent = Agent(cfg, driver_factory=fed(queue), clock=sim.clock())
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await agent.started.wait()
        for t, door in ((0, 1), (5, 0), (10, 1), (15, 0), (20, 1)):  # the door chatters: held active
            sim.to(float(t))
            queue.put_nowait(readings(float(t), door=door))
            await queue.join()
        await feed(agent, queue, sim, range(30, 700, 10))  # the forecast raises at 300 s; it holds to 690 s
        await receiver.wait_for(lambda ev: {e["subject"] for e in ev if e["type"].endswith("raised")} >= keys)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    before = len(receiver.events)
    assert {e["subject"] for e in receiver.events if e["type"] == "andon.alert.raised"} == keys

    # 40 s later the agent starts again on the same state_dir; its monotonic clock starts anew
    queue = asyncio.Queue()
    sim = SimClock(730.0, 3.0)
    again = Agent(cfg, driver_factory=fed(queue), clock=sim.clock())
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    try:
        await again.started.wait()
        await feed(again, queue, sim, range(730, 800, 10))  # the same readings (the ramp still rising)
        assert again.alerts is not None and set(again.alerts.active) >= keys
        queue.put_nowait(readings(800.0, fault_code=31))  # something new still goes out
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "updated")) == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    after = [(e["subject"], e["type"].rsplit(".", 1)[1]) for e in receiver.events[before:]]
    assert after == [("m1/code", "updated")], after  # nothing cleared, nothing raised again
