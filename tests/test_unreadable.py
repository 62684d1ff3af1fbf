"""``<machine>/unreadable``: a signal a rule watches that stays unreadable is not silent.

The pure core (observe, judge) with tables; then the whole agent against a real pymodbus server
that refuses an address and later accepts it, an OPC UA node with a Bad status, and a restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import Config
from agent.demo.receiver import Receiver
from agent.model import Quality, Sample, Severity, TransitionKind
from agent.rules.unreadable import UNREADABLE, BlindState, judge, observe
from drivers.modbus.sim import SimulatedMachine
from tests.conftest import WEAR_SIGNALS, machine_doc
from tests.opcua_fixtures import OpcuaSim
from tests.waiting import Changes, of, running_agent

WATCHED = {"fault": ["spindle-fault"], "wear": ["wear", "wear-due"]}
BAD = "Modbus exception 2 (illegal data address)"


def good(signal: str, value: float = 1.0) -> Sample:
    return Sample("m1", signal, value, Quality.GOOD, 0.0)


def bad(signal: str, why: str = BAD) -> Sample:
    return Sample("m1", signal, None, Quality.BAD, 0.0, why)


def step(state: BlindState, now: float) -> tuple[BlindState, list[tuple[TransitionKind, str | None, str]]]:
    new, ts = judge(state, machine="m1", watched=WATCHED, now=now, wall=1e9, after=10.0, severity=Severity.WARNING)
    return new, [(t.kind, t.signal, t.message) for t in ts]


def test_observe_tracks_watched_signals_that_read_bad() -> None:
    s = observe(BlindState(), [bad("fault"), bad("other"), good("wear")], WATCHED, 100.0)
    assert (dict(s.since), dict(s.why)) == ({"fault": 100.0}, {"fault": BAD})  # "other" has no rule
    assert observe(s, [bad("fault")], WATCHED, 105.0) is s  # still bad: the clock keeps its start
    s2 = observe(s, [bad("fault", "Modbus exception 4 (device failure)")], WATCHED, 106.0)
    assert (s2.since["fault"], s2.why["fault"]) == (100.0, "Modbus exception 4 (device failure)")
    assert dict(observe(s, [good("fault")], WATCHED, 107.0).since) == {}
    assert observe(s, [good("wear")], WATCHED, 107.0) is s  # a push batch without the signal changes nothing


@pytest.mark.parametrize(
    ("samples", "times", "kinds"),
    [
        # unreadable for less than offline_after: nothing
        ([[bad("fault")]], [9.9], []),
        # for offline_after: raised once, naming the signal and why
        ([[bad("fault")], [bad("fault")], [bad("fault")]], [0, 10, 20], ["raised"]),
        # then readable again: cleared
        ([[bad("fault")], [bad("fault")], [good("fault")]], [0, 10, 11], ["raised", "cleared"]),
        # a second signal goes blind while the alert is active: updated
        ([[bad("fault")], [bad("fault"), bad("wear")], [bad("wear")]], [0, 10, 21], ["raised", "updated"]),
        # one of two recovers: updated, then the other: cleared
        (
            [[bad("fault"), bad("wear")], [bad("fault"), bad("wear")], [good("fault")], [good("wear")]],
            [0, 10, 11, 12],
            ["raised", "updated", "cleared"],
        ),
        # a signal still bad but not yet for offline_after holds the alert (after a restart, say)
        (
            [[bad("fault")], [bad("fault")], [good("fault"), bad("wear")], [good("wear")]],
            [0, 10, 11, 12],
            ["raised", "cleared"],
        ),
    ],
)
def test_judge_raises_updates_and_clears(samples: list[list[Sample]], times: list[float], kinds: list[str]) -> None:
    state, seen = BlindState(), []
    for batch, t in zip(samples, times, strict=True):
        state = observe(state, batch, WATCHED, t)
        state, out = step(state, t)
        seen += out
    assert [k.value for k, _, _ in seen] == kinds
    if seen:
        _, signal, text = seen[0]
        assert signal in ("fault", "wear")
        assert text.startswith("m1: ") and BAD in text and "spindle-fault" in text


def test_the_message_names_machine_signals_reasons_and_blind_rules() -> None:
    state = observe(BlindState(), [bad("fault"), bad("wear", "BadSensorFailure")], WATCHED, 0.0)
    _, [(kind, signal, text)] = step(state, 10.0)
    assert (kind, signal) == (TransitionKind.RAISED, "fault")
    assert text == (
        "m1: 2 watched signal(s) unreadable for 10s or more (fault: " + BAD + "; wear: BadSensorFailure); "
        "rule(s) spindle-fault, wear, wear-due cannot see them: check the signal's address or node against the "
        "PLC program"
    )


def test_after_a_restart_the_same_alert_is_not_raised_again() -> None:
    state = observe(BlindState(), [bad("fault")], WATCHED, 0.0)
    state, [(_, _, text)] = step(state, 10.0)
    restarted = observe(BlindState(sent=text), [bad("fault")], WATCHED, 50.0)  # sent: the alert's stored message
    assert step(restarted, 60.0)[1] == []
    assert [k for k, _, _ in step(observe(restarted, [good("fault")], WATCHED, 61.0), 61.0)[1]] == [
        TransitionKind.CLEARED
    ]


# -- the whole agent -------------------------------------------------------------------------------


def key_safe(subject: str) -> bool:
    return all(re.fullmatch(r"[-_.A-Za-z0-9]+", level) for level in subject.split("/"))


async def test_a_refused_address_raises_unreadable_and_clears_once_the_device_accepts_it(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    """A fault rule gone blind is not silent: the device refuses the fault bit's register; later a
    PLC program change makes it readable, the agent's re-probe finds it, and the alert clears."""
    machine.refused.add(("holding", 10))
    doc = machine_doc("m1", machine.port, WEAR_SIGNALS, refused_retry="300ms", offline_after="500ms")
    cfg = make_config(machine.port, receiver.url, machines=[doc])
    changes = Changes()
    async with running_agent(cfg, changes=changes) as agent:
        await receiver.wait_for(lambda ev: of(ev, "m1/unreadable", "raised") != [])
        [raised] = of(receiver.events, "m1/unreadable", "raised")
        data = raised["data"]
        assert (data["machine"], data["rule"], data["signal"], data["severity"]) == (
            "m1",
            UNREADABLE,
            "fault",
            "warning",
        )
        assert data["signals"] == [{"signal": "fault", "error": BAD}]
        assert "fault" in data["message"] and "illegal data address" in data["message"] and "m1" in data["message"]
        assert key_safe(raised["subject"])
        assert not agent.machines[0].status.offline  # the machine answers: it is not offline
        machine.refused.clear()
        await receiver.wait_for(lambda ev: of(ev, "m1/unreadable", "cleared") != [])
        await machine.set("holding", 10, [0b1000])  # and the fault rule sees again
        await receiver.wait_for(lambda ev: of(ev, "m1/fault", "raised") != [])
    subjects = [e["subject"] for e in receiver.events]
    assert "m1/offline" not in subjects and subjects.count("m1/unreadable") == 2


async def test_a_bad_status_opcua_node_raises_unreadable(
    opcua: OpcuaSim, receiver: Receiver, tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    from asyncua.ua.status_codes import StatusCodes

    await opcua.set("Blind.Fault", False)
    signals = [
        {"id": "fault", "node": opcua.node_id("Blind.Fault")},
        {"id": "other", "node": opcua.node_id("Blind.Other")},
    ]
    doc: dict[str, Any] = {"id": "m1", "protocol": "opcua", "endpoint": opcua.endpoint, "signals": signals}
    doc |= {"poll_interval": "50ms", "offline_after": "500ms", "timeout": "1s", "reconnect_max": "300ms"}
    rules = [{"id": "spindle-fault", "machine": "m1", "signal": "fault", "kind": "fault"}]
    cfg = make_config(0, receiver.url, machines=[doc], rules=rules)
    async with running_agent(cfg):
        await opcua.set_status("Blind.Fault", StatusCodes.BadSensorFailure, False)
        await receiver.wait_for(lambda ev: of(ev, "m1/unreadable", "raised") != [])
        [raised] = of(receiver.events, "m1/unreadable", "raised")
        assert raised["data"]["signals"] == [{"signal": "fault", "error": "BadSensorFailure"}]
        assert "spindle-fault" in raised["data"]["message"]
        await opcua.set("Blind.Fault", False)
        await receiver.wait_for(lambda ev: of(ev, "m1/unreadable", "cleared") != [])
    assert "m1/offline" not in [e["subject"] for e in receiver.events]  # "other" reads: the machine answers


async def test_still_unreadable_after_a_restart_is_not_raised_twice(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    machine.refused.add(("holding", 10))
    doc = machine_doc("m1", machine.port, WEAR_SIGNALS, offline_after="300ms")
    cfg = make_config(machine.port, receiver.url, machines=[doc])
    async with running_agent(cfg):
        await receiver.wait_for(lambda ev: of(ev, "m1/unreadable", "raised") != [])
    async with running_agent(cfg) as agent:
        runner = agent.machines[0]
        polls = runner.status.reads
        while runner.status.reads < polls + 20:  # well past offline_after, still unreadable
            await machine.wait_requests(1)
    assert [e["type"] for e in receiver.events if e["subject"] == "m1/unreadable"] == ["andon.alert.raised"]
