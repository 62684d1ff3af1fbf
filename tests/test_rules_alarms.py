"""The alarms rule: condition events -> transitions (pure; table tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from agent.config.rules import AlarmsRule
from agent.model import ConditionEvent, Severity, Transition
from agent.rules.alarms import AlarmsState, alarms_tick, condition_key, on_events, restore, severity_of

SERVER = "i=2253"


def rule(**extra: Any) -> AlarmsRule:
    return AlarmsRule.model_validate({"id": "alarms", "machine": "mill", "kind": "alarms", **extra})


def ev(
    name: str = "Overheat",
    active: bool = True,
    severity: int = 800,
    message: str = "Spindle too hot",
    *,
    source: str = "Spindle",
    notifier: str = SERVER,
    t: float = 1000.0,
) -> ConditionEvent:
    return ConditionEvent(
        "condition",
        "mill",
        notifier,
        t,
        condition_id=f"nsu=urn:mill;s={source}.{name}",
        source=source,
        name=name,
        active=active,
        severity=severity,
        message=message,
        retain=active,
    )


def marker(kind: str, notifier: str = SERVER) -> ConditionEvent:
    return ConditionEvent(kind, "mill", notifier, 1000.0)  # type: ignore[arg-type]


def brief(ts: list[Transition]) -> list[tuple[str, str, str, Any, str]]:
    return [(t.kind.value, t.key, t.severity.label, t.value, t.message) for t in ts]


def run(
    r: AlarmsRule, steps: Sequence[tuple[float, list[ConditionEvent]]], state: AlarmsState | None = None
) -> list[Any]:
    """Feed each (now, events) step; a step with no events is a clock tick. Every transition, in order."""
    st = state or AlarmsState()
    out: list[Transition] = []
    for now, events in steps:
        st, ts = on_events(r, st, events, now) if events else alarms_tick(r, st, now, 2000.0 + now)
        out += ts
    return brief(out)


K = "mill/alarms/Spindle.Overheat"
HOT, HOTTER = "Spindle too hot", "Spindle much too hot"


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [(0, [ev()])],
            [("raised", K, "critical", 800, HOT)],
            id="active: raised",
        ),
        pytest.param(
            [(0, [ev()]), (1, [ev(severity=900)])],
            [("raised", K, "critical", 800, HOT), ("updated", K, "critical", 900, HOT)],
            id="severity changes (same agent severity): updated",
        ),
        pytest.param(
            [(0, [ev()]), (1, [ev(severity=500)])],
            [("raised", K, "critical", 800, HOT), ("updated", K, "warning", 500, HOT)],
            id="severity falls to warning: updated",
        ),
        pytest.param(
            [(0, [ev()]), (1, [ev(message=HOTTER)])],
            [("raised", K, "critical", 800, HOT), ("updated", K, "critical", 800, HOTTER)],
            id="message changes: updated",
        ),
        pytest.param(
            [(0, [ev()]), (1, [ev()]), (2, [ev()])],
            [("raised", K, "critical", 800, HOT)],
            id="same severity and message (an acknowledgement): nothing",
        ),
        pytest.param(
            [(0, [ev()]), (1, [ev(active=False, message="Spindle temperature normal")])],
            [("raised", K, "critical", 800, HOT), ("cleared", K, "critical", 800, "Spindle temperature normal")],
            id="inactive: cleared, with the alarm's own text",
        ),
        pytest.param(
            [(0, [ev(active=False)])],
            [],
            id="inactive and never raised: nothing",
        ),
        pytest.param(
            [(0, [ev(notifier="ns=2;s=Area1")])],
            [],
            id="another notifier's event: not this rule's",
        ),
        pytest.param(
            [(0, [ev(name="Door open", source="Guard 2", severity=200, message="")])],
            [("raised", "mill/alarms/Guard_2.Door_open", "info", 200, "Guard 2 Door open: active")],
            id="names made safe; no text: a made-up one",
        ),
        pytest.param(
            [(0, [ev(), ev(name="Lube", severity=400, message="Lube low")]), (1, [ev(active=False)])],
            [
                ("raised", K, "critical", 800, HOT),
                ("raised", "mill/alarms/Spindle.Lube", "warning", 400, "Lube low"),
                ("cleared", K, "critical", 800, HOT),
            ],
            id="each condition is its own alert",
        ),
    ],
)
def test_events_to_transitions(steps: list[tuple[float, list[ConditionEvent]]], expected: list[Any]) -> None:
    assert run(rule(), steps) == expected


@pytest.mark.parametrize(
    ("opc", "severity"),
    [(1, "info"), (333, "info"), (334, "warning"), (666, "warning"), (667, "critical"), (1000, "critical")],
)
def test_severity_bands(opc: int, severity: str) -> None:
    assert severity_of(opc).label == severity
    assert run(rule(), [(0, [ev(severity=opc)])])[0][2] == severity


def test_min_severity_filters() -> None:
    r = rule(min_severity=500)
    steps = [
        (0, [ev(severity=400)]),  # below: ignored
        (1, [ev(severity=600)]),  # now at or over: raised
        (2, [ev(severity=400)]),  # falls below while active: the alert clears
        (3, [ev(severity=499)]),  # still below: nothing
    ]
    assert run(r, steps) == [("raised", K, "warning", 600, HOT), ("cleared", K, "warning", 400, HOT)]


def test_data_fields_and_key() -> None:
    _, (t,) = on_events(rule(), AlarmsState(), [ev()], 0.0)
    assert (t.key, t.machine, t.rule, t.part, t.signal, t.threshold, t.time) == (
        K,
        "mill",
        "alarms",
        "Spindle.Overheat",
        None,
        None,
        1000.0,
    )
    assert t.extra == {
        "kind": "alarms",
        "condition": "Overheat",
        "source": "Spindle",
        "condition_id": "nsu=urn:mill;s=Spindle.Overheat",
    }


# -- ConditionRefresh and restarts ------------------------------------------------------------------


def test_refresh_after_restart_raises_nothing_twice_and_clears_what_is_gone() -> None:
    """The alert log had Overheat and DoorOpen active; the refresh reports Overheat (still active,
    now with its message) and a new Lube alarm; DoorOpen is not reported: it cleared meanwhile."""
    r = rule()
    active = {K: Severity.CRITICAL, "mill/alarms/Guard.DoorOpen": Severity.WARNING, "mill/other/x": Severity.INFO}
    state = restore(r, active)
    assert state.active == {"Spindle.Overheat": Severity.CRITICAL, "Guard.DoorOpen": Severity.WARNING}
    events = [marker("refresh_start"), ev(), ev(name="Lube", severity=400, message="Lube low"), marker("refresh_end")]
    state, ts = on_events(r, state, events, 0.0)
    assert brief(ts) == [
        ("raised", "mill/alarms/Spindle.Lube", "warning", 400, "Lube low"),
        (
            "cleared",
            "mill/alarms/Guard.DoorOpen",
            "warning",
            0,
            "Guard.DoorOpen is no longer active (it cleared while the agent was not listening)",
        ),
    ]
    assert state.active == {"Spindle.Overheat": Severity.CRITICAL, "Spindle.Lube": Severity.WARNING}
    # The restored alert adopted what it is about: a change now is an update, the same is nothing.
    _, ts = on_events(r, state, [ev(), ev(message=HOTTER)], 1.0)
    assert brief(ts) == [("updated", K, "critical", 800, HOTTER)]


def test_refresh_on_reconnect_clears_alarms_that_ended_while_disconnected() -> None:
    r = rule()
    state, _ = on_events(r, AlarmsState(), [ev(), ev(name="Lube", severity=400)], 0.0)
    # reconnect: only Lube is still active (Overheat ended and was acknowledged meanwhile)
    events = [marker("refresh_start"), ev(name="Lube", severity=400), marker("refresh_end")]
    state, ts = on_events(r, state, events, 5.0)
    assert [(t.kind.value, t.key) for t in ts] == [("cleared", K)]
    assert ts[0].message == "Spindle Overheat is no longer active (it cleared while the agent was not listening)"
    assert state.active == {"Spindle.Lube": Severity.WARNING}


def test_refresh_reports_an_inactive_but_retained_condition() -> None:
    """Unacknowledged after it ended: the server still retains it; it is reported inactive."""
    r = rule()
    state, _ = on_events(r, AlarmsState(), [ev()], 0.0)
    events = [marker("refresh_start"), ev(active=False), marker("refresh_end")]
    state, ts = on_events(r, state, events, 5.0)
    assert brief(ts) == [("cleared", K, "critical", 800, HOT)]
    assert state.active == {}


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([marker("refresh_end")], id="an end without a start"),
        pytest.param([marker("refresh_start", "ns=2;s=Area1"), marker("refresh_end", "ns=2;s=Area1")], id="other"),
    ],
)
def test_refresh_markers_that_are_not_ours_change_nothing(events: list[ConditionEvent]) -> None:
    state = restore(rule(), {K: Severity.CRITICAL})
    after, ts = on_events(rule(), state, events, 0.0)
    assert ts == [] and after.active == {"Spindle.Overheat": Severity.CRITICAL}


# -- the shared lifecycle applies -------------------------------------------------------------------


def test_chattering_alarm_is_held_active_then_clears_on_the_clock() -> None:
    r = rule(chatter_count=3, chatter_window="60s")
    on, off = ev(), ev(active=False)
    steps = [(0, [on]), (1, [off]), (2, [on]), (3, [off]), (4, [on]), (5, [off]), (30, []), (66, [])]
    out = run(r, steps)
    assert [k for k, *_ in out] == ["raised", "cleared", "raised", "cleared", "raised", "cleared"]
    state = AlarmsState()
    flags = []
    for now, events in steps[:5]:
        state, ts = on_events(r, state, events, now)
        flags += [t.extra.get("chattering", False) for t in ts if t.kind.value == "raised"]
    assert flags == [False, False, True]
    state, ts = on_events(r, state, [off], 5)
    assert ts == []  # held: chattering
    state, ts = alarms_tick(r, state, 64.9, 3000.0)
    assert ts == []
    state, ts = alarms_tick(r, state, 65.0, 3001.0)
    assert [(t.kind.value, t.time) for t in ts] == [("cleared", 3001.0)]


def test_on_delay_and_off_delay() -> None:
    r = rule(on_delay="2s", off_delay="3s")
    steps = [(0, [ev()]), (1, []), (2, []), (3, [ev(active=False)]), (5, []), (6, [])]
    assert [k for k, *_ in run(r, steps)] == ["raised", "cleared"]
    # a blip shorter than the on-delay never reaches anyone
    assert run(r, [(0, [ev()]), (1, [ev(active=False)]), (5, [])]) == []


def test_repeat_every() -> None:
    r = rule(repeat_every="10s")
    assert [k for k, *_ in run(r, [(0, [ev()]), (5, []), (10, []), (15, []), (20, [])])] == [
        "raised",
        "updated",
        "updated",
    ]


def test_normal_conditions_are_forgotten() -> None:
    r = rule(chatter_window="60s")
    state, _ = on_events(r, AlarmsState(), [ev(), ev(active=False)], 0.0)
    assert set(state.states) == {"Spindle.Overheat"}  # its raise still counts for chattering
    state, _ = alarms_tick(r, state, 60.0, 0.0)
    assert state.states == {} and state.last == {}


# -- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name", "condition_id", "key"),
    [
        ("Spindle", "Overheat", None, "Spindle.Overheat"),
        ("Guard 2", "Door open!", None, "Guard_2.Door_open"),
        ("Achse/X", "Übertemperatur", None, "Achse_X._bertemperatur"),
        ("", "Overheat", None, "Overheat"),
        ("", "", "ns=2;s=Cond.7", "ns_2_s_Cond.7"),
        ("", "", None, "condition"),
        ("+#/", "", None, "condition"),
    ],
)
def test_condition_key(source: str, name: str, condition_id: str | None, key: str) -> None:
    assert condition_key(source, name, condition_id) == key


def test_long_condition_keys_stay_apart() -> None:
    a = condition_key("S" * 40, "A" * 40 + "1")
    b = condition_key("S" * 40, "A" * 40 + "2")
    assert len(a) == len(b) == 64 and a != b and a[:50] == b[:50]


# -- config --------------------------------------------------------------------------------------------


def _doc(rule: dict[str, Any], protocol: str = "opcua") -> dict[str, Any]:
    machine: dict[str, Any] = {"id": "mill", "protocol": protocol, "signals": [{"id": "s"}]}
    if protocol == "opcua":
        machine["endpoint"] = "opc.tcp://mill:4840"
        machine["signals"] = [{"id": "s", "node": "ns=2;s=S"}]
    else:
        machine["host"] = "10.0.0.9"
        machine["signals"] = [{"id": "s", "address": 0}]
    return {"machines": [machine], "rules": [{"id": "alarms", "machine": "mill", "kind": "alarms", **rule}]}


def test_alarms_rule_defaults() -> None:
    from agent.config import parse_config

    (r,) = parse_config(_doc({})).rules
    assert isinstance(r, AlarmsRule)
    assert (r.source, r.min_severity, r.signal, r.chatter_count) == ("i=2253", 1, None, 3)


@pytest.mark.parametrize(
    ("rule", "protocol", "problem"),
    [
        ({"signal": "s"}, "opcua", r"rules\[0\]\.signal: an alarms rule has no `signal`: each alarm of the machine"),
        ({"severity": "critical"}, "opcua", r"rules\[0\]\.severity: an alarms rule has no `severity`"),
        ({"message": "x"}, "opcua", r"rules\[0\]\.message: an alarms rule has no `message`"),
        ({"min_severity": 0}, "opcua", r"rules\[0\]\.min_severity: .*greater than or equal to 1"),
        ({"min_severity": 1001}, "opcua", r"rules\[0\]\.min_severity: .*less than or equal to 1000"),
        ({"source": "Server"}, "opcua", r'rules\[0\]\.source: .*must be an OPC UA node id like "i=2253"'),
        ({"sourse": "i=2253"}, "opcua", r"rules\[0\]\.sourse"),
        ({}, "modbus", r"rules\[0\]\.machine: machine 'mill' is modbus: only an OPC UA machine reports its own"),
    ],
)
def test_alarms_rule_config_errors(rule: dict[str, Any], protocol: str, problem: str) -> None:
    from agent.config import parse_config
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        parse_config(_doc(rule, protocol))


@pytest.mark.parametrize(
    "source", ["i=2253", "ns=3;s=Area 1", "nsu=http://x/;i=5001", "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a"]
)
def test_alarms_rule_sources(source: str) -> None:
    from agent.config import parse_config

    assert parse_config(_doc({"source": source})).rules[0].source == source  # type: ignore[union-attr]


def test_check_prints_the_alarms_rule() -> None:
    from agent.cli.check import summary
    from agent.config import parse_config

    text = summary(parse_config(_doc({"min_severity": 400, "source": "ns=2;s=Area1"})))
    assert (
        "rule alarms: alarms of mill (every condition its own alert), events of ns=2;s=Area1, "
        "OPC UA severity 400 and over" in text
    )
    assert "events of the Server object\n" in summary(parse_config(_doc({}))) + "\n"
