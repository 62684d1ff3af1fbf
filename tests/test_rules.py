"""Rules are pure: tables of (sample, time) in, transitions out, plus hypothesis properties."""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.config import CodeRule, FaultRule, ForecastRule, StaleRule, ThresholdRule, ToolLifeRule
from agent.model import Quality, Sample, Severity, TransitionKind
from agent.rules import RuleState, evaluate, render_message, tick

M = TypeVar("M", bound=BaseModel)
R, U, C = TransitionKind.RAISED, TransitionKind.UPDATED, TransitionKind.CLEARED
W, CR = Severity.WARNING, Severity.CRITICAL


def threshold(**kw: Any) -> ThresholdRule:
    doc = {"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80, "critical": 95}
    doc.update(kw)
    return ThresholdRule.model_validate(doc)


def fault(**kw: Any) -> FaultRule:
    return FaultRule.model_validate({"id": "f", "machine": "m1", "signal": "fault", "kind": "fault", **kw})


def sample(value: Any, t: float = 0.0, good: bool = True) -> Sample:
    return Sample("m1", "wear", value if good else None, Quality.GOOD if good else Quality.BAD, 1_700_000_000 + t)


def run(rule: Any, steps: list[tuple[float, Any]], state: RuleState | None = None) -> list[tuple[float, Any, Any]]:
    """Feed (time, value) steps; return (time, kind, severity) of every transition."""
    state = state or RuleState()
    out = []
    for t, v in steps:
        state, ts = evaluate(rule, state, sample(v, t, good=v is not None), t)
        out += [(t, x.kind, x.severity) for x in ts]
    return out


@pytest.mark.parametrize(
    ("rule", "steps", "expected"),
    [
        # raise at the warning limit (at/over), escalate to critical, clear below
        (threshold(), [(0, 50), (1, 80), (2, 96), (3, 10)], [(1, R, W), (2, U, CR), (3, C, CR)]),
        # de-escalation critical -> warning is an update
        (threshold(), [(0, 96), (1, 85)], [(0, R, CR), (1, U, W)]),
        # deadband: stays active until below limit - deadband
        (threshold(deadband=2), [(0, 81), (1, 79), (2, 78.5), (3, 77.9)], [(0, R, W), (3, C, W)]),
        (threshold(deadband=2), [(0, 96), (1, 93.5), (2, 92.9)], [(0, R, CR), (2, U, W)]),
        # without deadband a value just under the limit clears
        (threshold(), [(0, 80), (1, 79.99)], [(0, R, W), (1, C, W)]),
        # critical only
        (threshold(warning=None), [(0, 90), (1, 95), (2, 94)], [(1, R, CR), (2, C, CR)]),
        # on_delay: must hold 5 s; a dip restarts the wait
        (threshold(on_delay="5s"), [(0, 85), (3, 85), (4, 70), (5, 85), (9, 85), (10, 85)], [(10, R, W)]),
        # off_delay: must stay normal 5 s; a return to the limit cancels the clear
        (threshold(off_delay="5s"), [(0, 85), (1, 70), (4, 85), (5, 70), (9, 70), (10, 70)], [(0, R, W), (10, C, W)]),
        # repeat_every: re-sent as updated while active
        (
            threshold(repeat_every="10s"),
            [(0, 85), (5, 85), (10, 85), (15, 85), (20, 86)],
            [(0, R, W), (10, U, W), (20, U, W)],
        ),
        # bad quality samples change nothing
        (threshold(), [(0, 85), (1, None), (2, None), (3, 85)], [(0, R, W)]),
        # fault rule: non-zero / true is active, default severity critical
        (fault(), [(0, 0), (1, 1), (2, True), (3, 0), (4, False)], [(1, R, CR), (3, C, CR)]),
        (fault(severity="info"), [(0, 1), (1, 0)], [(0, R, Severity.INFO), (1, C, Severity.INFO)]),
    ],
)
def test_rule_table(rule: Any, steps: list[tuple[float, Any]], expected: list[tuple[float, Any, Any]]) -> None:
    assert run(rule, steps) == expected


def test_restored_active_state_is_not_raised_again() -> None:
    # After a restart the alert log restores only the active severity.
    assert run(threshold(), [(0, 85), (1, 86)], RuleState(active=W, threshold=80)) == []
    assert run(threshold(), [(0, 50)], RuleState(active=W, threshold=80)) == [(0, C, W)]


def test_transition_carries_contract_fields() -> None:
    _, [t] = evaluate(threshold(), RuleState(), sample(96.25), 0.0, "%")
    assert (t.machine, t.rule, t.signal, t.key) == ("m1", "wear", "wear", "m1/wear")
    assert t.value == 96.25 and t.threshold == 95 and t.severity is CR
    assert "96.25%" in t.message and "95%" in t.message and "act now" in t.message
    assert t.time == 1_700_000_000


def test_user_message_template() -> None:
    rule = threshold(message="Change tool 1 on {machine}: wear {value}{unit} (limit {threshold}{unit})")
    _, [t] = evaluate(rule, RuleState(), sample(81.0), 0.0, "%")
    assert t.message == "Change tool 1 on m1: wear 81% (limit 80%)"
    assert render_message("{machine} {nope}", {"machine": "m1"}) == "m1 {nope}"


def test_template_format_specs_apply_to_numbers() -> None:
    rule = threshold(message="wear {value:.1f}{unit} over {threshold:.0f}{unit}")
    _, [t] = evaluate(rule, RuleState(), sample(81.234), 0.0, "%")
    assert t.message == "wear 81.2% over 80%"
    _, [t] = evaluate(threshold(), RuleState(), sample(1234567.0), 0.0)
    assert "1.23457e+06" in t.message  # a huge float is shown short, never crashes


# -- the other kinds -----------------------------------------------------------------------------


def _rule(model: type[M], kind: str, **kw: Any) -> M:
    return model.model_validate({"id": kind, "machine": "m1", "signal": "wear", "kind": kind, **kw})


def code(**kw: Any) -> CodeRule:
    table = {"12": {"message": "Spindle overload", "severity": "critical"}, "31": {"message": "Coolant low"}}
    return _rule(CodeRule, "code", **{"codes": table, **kw})


def tool_life(**kw: Any) -> ToolLifeRule:
    return _rule(ToolLifeRule, "tool_life", **{"limit": 100, "warning_remaining": 10, **kw})


def forecast(**kw: Any) -> ForecastRule:
    doc = {"limit": 95, "horizon": "10m", "window": "5m", "min_points": 10, "chatter_count": 0, **kw}
    return _rule(ForecastRule, "forecast", **doc)


def stale(**kw: Any) -> StaleRule:
    return _rule(StaleRule, "stale", **{"after": "10s", **kw})


def transitions(rule: Any, steps: list[tuple[float, Any]], state: RuleState | None = None) -> list[Any]:
    state = state or RuleState()
    out = []
    for t, v in steps:
        state, ts = evaluate(rule, state, sample(v, t, good=v is not None), t, "%")
        out += ts
    return out


def ramp(start: float, per_second: float, until: float, step: float = 1.0, t0: float = 0.0) -> list[tuple[float, Any]]:
    n = int((until - t0) / step)
    return [(t0 + i * step, start + per_second * i * step) for i in range(n + 1)]


@pytest.mark.parametrize(
    ("rule", "steps", "expected"),
    [
        # code: 0 is normal; a table code raises with its severity; another code is an update
        (code(), [(0, 0), (1, 12), (2, 12), (3, 31), (4, 0)], [(1, R, CR), (3, U, W), (4, C, W)]),
        # a code missing from the table still alerts, with the rule's severity
        (code(severity="info"), [(0, 77), (1, 77), (2, 0)], [(0, R, Severity.INFO), (2, C, Severity.INFO)]),
        # several normal codes
        (code(normal=[0, 1]), [(0, 1), (1, 0), (2, 31)], [(2, R, W)]),
        # codes may come as floats or text
        (code(), [(0, 12.0), (1, "31"), (2, "0")], [(0, R, CR), (1, U, W), (2, C, W)]),
        # tool_life counting up: warning with 10 left, critical at the limit, cleared by a new tool
        (tool_life(), [(0, 50), (1, 90), (2, 95), (3, 100), (4, 130), (5, 0)], [(1, R, W), (3, U, CR), (5, C, CR)]),
        # counting down to 0
        (
            tool_life(direction="down", limit=None),
            [(0, 50), (1, 10), (2, 0), (3, 500)],
            [(1, R, W), (2, U, CR), (3, C, CR)],
        ),
        # no pre-warning: only the limit
        (tool_life(warning_remaining=None), [(0, 99), (1, 100)], [(1, R, CR)]),
        # stale: unchanged for 10 s raises; a change clears
        (stale(), [(0, 5), (5, 5), (9, 5), (10, 5), (11, 6), (12, 6)], [(10, R, W), (11, C, W)]),
        # changes within the tolerance do not count
        (stale(tolerance=1), [(0, 5), (5, 5.5), (10, 4.5), (11, 7)], [(10, R, W), (11, C, W)]),
        # chattering: the third raise within a minute is held until normal for a minute
        (
            threshold(),
            [(0, 85), (1, 70), (2, 85), (3, 70), (4, 85), (5, 70), (6, 85), (7, 70), (30, 70), (66, 70), (67, 70)],
            [(0, R, W), (1, C, W), (2, R, W), (3, C, W), (4, R, W), (67, C, W)],
        ),
        # chatter_count = 0 turns it off
        (
            threshold(chatter_count=0),
            [(0, 85), (1, 70), (2, 85), (3, 70), (4, 85), (5, 70)],
            [(0, R, W), (1, C, W), (2, R, W), (3, C, W), (4, R, W), (5, C, W)],
        ),
        # raises further apart than chatter_window are not chattering
        (
            threshold(chatter_window="10s"),
            [(0, 85), (1, 70), (6, 85), (7, 70), (12, 85), (13, 70)],
            [(0, R, W), (1, C, W), (6, R, W), (7, C, W), (12, R, W), (13, C, W)],
        ),
    ],
)
def test_kind_table(rule: Any, steps: list[tuple[float, Any]], expected: list[tuple[float, Any, Any]]) -> None:
    assert run(rule, steps) == expected


def test_code_transitions_carry_the_code_and_its_meaning() -> None:
    raised, updated, cleared = transitions(code(name="the controller"), [(0, 12), (1, 77), (2, 0)])
    assert raised.extra == {"code": 12, "code_text": "Spindle overload", "kind": "code"}
    assert raised.message == (
        "m1 reports fault 12 on the controller: Spindle overload (critical): "
        "check the machine now, then reset the fault"
    )
    assert updated.extra["code"] == 77 and "77" in updated.message and "manual" in updated.message
    assert updated.severity is W
    assert cleared.extra == {"code": 0, "kind": "code"} and "no fault" in cleared.message


def test_restored_code_alert_adopts_the_code_without_an_update() -> None:
    restored = RuleState(active=W)
    assert run(code(), [(0, 31), (1, 31)], restored) == []
    assert run(code(), [(0, 31), (1, 12)], restored) == [(1, U, CR)]


def test_tool_life_data_carries_the_remaining_life() -> None:
    warned, critical, cleared = transitions(tool_life(name="punch 3"), [(0, 92), (1, 103), (2, 0)])
    assert warned.extra == {"remaining": 8, "kind": "tool_life"} and warned.threshold == 90
    assert warned.message == (
        "punch 3 on m1 has 8% of tool life left (counter 92%, life ends at 100%): have a new tool ready and "
        "change it at the next stop"
    )
    assert critical.extra == {"remaining": -3, "kind": "tool_life"} and critical.threshold == 100
    assert "change the tool now" in critical.message and "has 0% of tool life left" in critical.message
    assert (
        cleared.kind is C and cleared.extra == {"remaining": 100, "kind": "tool_life"} and "new tool" in cleared.message
    )
    down = transitions(tool_life(direction="down", limit=None, warning_remaining=50), [(0, 40)])
    assert down[0].extra == {"remaining": 40, "kind": "tool_life"} and down[0].threshold == 50


def test_forecast_warns_ahead_with_the_time_to_the_limit() -> None:
    # 50 % rising 0.05 %/s reaches 95 % at t = 900 s; the horizon (10 min) is reached at t = 300 s.
    rule = forecast(name="tool 1")
    raised, *rest = transitions(rule, ramp(50, 0.05, 400))
    assert rest == [] and raised.kind is R and raised.severity is W
    assert raised.time == sample(0, 300).time
    assert raised.extra["seconds_to_limit"] == 600
    assert raised.extra["rise_per_minute"] == pytest.approx(3.0)
    assert raised.extra["fit_r2"] == pytest.approx(1.0)
    assert raised.threshold == 95
    assert raised.message.startswith("tool 1 on m1 reaches 95% in about 10 min (now 65%, rising 3%/min)")


def test_forecast_clears_on_a_tool_change_and_when_the_trend_no_longer_reaches_the_limit() -> None:
    rule = forecast()
    steps = ramp(50, 0.05, 400)
    changed = transitions(rule, [*steps, (401, 1.0), (402, 1.0)])
    assert [t.kind for t in changed] == [R, C]
    assert changed[1].time == sample(0, 401).time and "no longer reaches 95%" in changed[1].message
    # the wear stops rising at 70 %: the fitted trend flattens until the limit is out of the horizon
    flat = [(400 + i, 70.0) for i in range(1, 400)]
    slowed = transitions(rule, [*steps, *flat])
    assert [t.kind for t in slowed] == [R, C]


@pytest.mark.parametrize(
    "steps",
    [
        [(float(t), 90.0) for t in range(600)],  # flat, even over the warning side of the limit
        [(float(t), 94.0 - t * 0.01) for t in range(600)],  # falling
        [(float(t), 96.0) for t in range(600)],  # flat over the limit: that is a threshold rule's job
        [(float(t), 80.0 + ((t * 7919) % 13) / 10) for t in range(600)],  # scattered, no trend
        ramp(50, 0.05, 100),  # rising, but too short a history (under half the window)
    ],
)
def test_forecast_stays_quiet_without_a_believable_rising_trend(steps: list[tuple[float, Any]]) -> None:
    assert run(forecast(), steps) == []


def test_forecast_history_is_bounded() -> None:
    from agent.rules.kinds import FORECAST_MAX_POINTS

    state = RuleState()
    for t in range(0, 3000):
        state, _ = evaluate(forecast(), state, sample(10.0 + t * 1e-3, t * 0.1), t * 0.1)
    assert len(state.memo.points) <= FORECAST_MAX_POINTS + 2


def test_stale_counts_only_while_the_machine_runs() -> None:
    rule = stale(only_while="running", after="10s")

    def at(signal: str, value: Any, t: float) -> Sample:
        return Sample("m1", signal, value, Quality.GOOD, 1_700_000_000 + t)

    state, out = RuleState(), []
    steps = [
        ("wear", 5, 0),
        ("running", 0, 0),
        ("wear", 5, 30),  # stopped for 30 s with the counter frozen: fine
        ("running", 1, 31),
        ("wear", 5, 40),  # running 9 s: not yet
        ("wear", 5, 41),  # running 10 s, unchanged: stale
        ("running", 0, 50),  # stopped: cleared
    ]
    for signal, value, t in steps:
        state, ts = evaluate(rule, state, at(signal, value, t), t, "strokes")
        out += [(t, x.kind, x.value) for x in ts]
    assert out == [(41, R, 5), (50, C, 5)]


def test_stale_message_says_what_to_check() -> None:
    [t] = transitions(stale(name="stroke counter"), [(0, 7), (300, 7)])
    assert t.message == (
        "stroke counter on m1 has not changed for about 5 min (stuck at 7%) although it should: check the sensor, "
        "its wiring and the PLC program"
    )
    assert t.extra == {"unchanged_seconds": 300, "kind": "stale"} and t.threshold == 10


def test_chattering_raise_carries_a_note() -> None:
    ts = transitions(threshold(), [(0, 85), (1, 70), (2, 85), (3, 70), (4, 85)])
    assert [t.extra.get("chattering", False) for t in ts] == [False, False, False, False, True]
    assert "chattering: raised 3 times within 1 min; held active until it stays normal for 1 min" in ts[-1].message
    user = threshold(message="Wear {value}{unit}")
    assert transitions(user, [(0, 85), (1, 70), (2, 85), (3, 70), (4, 85)])[-1].message.startswith("Wear 85%")


def test_tick_lets_time_pass_without_a_new_value() -> None:
    rule = threshold(off_delay="5s", repeat_every="60s")
    state, [_] = evaluate(rule, RuleState(), sample(85, 0), 0.0)
    last = sample(70, 1)
    state, ts = evaluate(rule, state, last, 1.0)
    assert ts == []
    state, ts = tick(rule, state, last, 5.0, 1_700_000_005)
    assert ts == []
    state, [cleared] = tick(rule, state, last, 6.0, 1_700_000_006)
    assert cleared.kind is C and cleared.time == 1_700_000_006 and cleared.value == 70
    assert tick(rule, state, None, 7.0, 0) == (state, [])
    # repeat_every goes out on a tick too
    state, _ = evaluate(rule, RuleState(), sample(85, 0), 0.0)
    _, [again] = tick(rule, state, sample(85, 0), 60.0, 1_700_000_060)
    assert again.kind is U


def test_bad_or_unjudgeable_values_change_nothing() -> None:
    assert run(code(), [(0, "E12"), (1, 1.5)]) == []
    assert run(tool_life(), [(0, "x"), (1, float("nan"))]) == []
    assert run(forecast(), [(0, True)]) == []


# -- properties --------------------------------------------------------------------------------

numbers = st.one_of(
    st.sampled_from([0.0, 50.0, 79.0, 80.0, 85.0, 94.0, 95.0, 99.0, 100.0, 110.0]),
    st.floats(min_value=0, max_value=120, allow_nan=False),
)
codes = st.sampled_from([0, 0, 0, 12, 31, 77])
delays = st.one_of(st.just(0.0), st.floats(0, 5))
chatter = st.sampled_from([(0, 60.0), (2, 5.0), (3, 60.0)])


def _threshold_rule(d: float, on: float, off: float, ch: tuple[int, float]) -> Any:
    return threshold(deadband=d, on_delay=on, off_delay=off, chatter_count=ch[0], chatter_window=ch[1])


def _common(on: float, off: float, ch: tuple[int, float]) -> dict[str, Any]:
    return {"on_delay": on, "off_delay": off, "chatter_count": ch[0], "chatter_window": ch[1]}


# (rule, value strategy, a normal value for the tail: a function of the tail step)
kinds = st.one_of(
    st.tuples(st.builds(_threshold_rule, st.floats(0, 10), delays, delays, chatter), st.just(numbers)),
    st.tuples(st.builds(lambda on, off, ch: fault(**_common(on, off, ch)), delays, delays, chatter), st.just(numbers)),
    st.tuples(st.builds(lambda on, off, ch: code(**_common(on, off, ch)), delays, delays, chatter), st.just(codes)),
    st.tuples(
        st.builds(
            lambda on, off, ch, down: tool_life(**_common(on, off, ch), **({"direction": "down"} if down else {})),
            delays,
            delays,
            chatter,
            st.booleans(),
        ),
        st.just(numbers),
    ),
    st.tuples(
        st.builds(
            lambda on, off, ch: forecast(**_common(on, off, ch), window="20s", horizon="30s", min_points=3, min_r2=0),
            delays,
            delays,
            chatter,
        ),
        st.just(st.sampled_from([2.0, 1.0, 4.0, 0.5, 8.0, 0.0, -100.0])),  # rises by; -100: a new tool
    ),
    st.tuples(
        st.builds(lambda on, off, ch: stale(**_common(on, off, ch), after="6s"), delays, delays, chatter),
        st.just(st.sampled_from([1.0, 1.0, 1.0, 2.0])),
    ),
)


def _normal(rule: Any, i: int) -> Any:
    """A value the rule sees as normal, for the i-th step of a tail."""
    if isinstance(rule, ToolLifeRule):
        return 1000 if rule.direction == "down" else 0
    if isinstance(rule, StaleRule):
        return float(i)  # changing all the time
    return 0  # under every limit, no fault, a normal code, and a forecast's fall to a new tool


def _timeline(deltas: list[tuple[float, Any]]) -> list[tuple[float, Any]]:
    t, out = 0.0, []
    for dt, v in deltas:
        t += dt
        out.append((t, v))
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, list[tuple[float, Any]]]:
    rule, values = draw(kinds)
    longer = 20 if isinstance(rule, ForecastRule) else 0
    deltas = draw(
        st.lists(
            st.tuples(st.floats(min_value=0.0, max_value=5.0), st.one_of(st.none(), values)),
            min_size=longer,
            max_size=60,
        )
    )
    if isinstance(rule, ForecastRule):  # the values drawn are steps of a wear signal: up, or down to a new tool
        level, steps = 0.0, []
        for dt, v in deltas:
            level = level if v is None else 0.0 if v < 0 else level + v
            steps.append((0.5 + dt / 2, level))
        deltas = steps
    return rule, _timeline(deltas)


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_never_two_raises_without_a_clear(scenario: tuple[Any, list[tuple[float, Any]]]) -> None:
    rule, timeline = scenario
    active = False
    for _, kind, _ in run(rule, timeline):
        if kind is R:
            assert not active
            active = True
        elif kind is C:
            assert active
            active = False
        else:
            assert active  # updates only while active


@settings(max_examples=400, deadline=None)
@given(scenarios(), st.floats(min_value=0.5, max_value=3.0))
def test_every_raised_alert_clears_once_normal_longer_than_off_delay(
    scenario: tuple[Any, list[tuple[float, Any]]], step: float
) -> None:
    """Normal for longer than off_delay clears (a chattering alert: than chatter_window, if longer)."""
    rule, timeline = scenario
    end = timeline[-1][0] if timeline else 0.0
    hold = max(rule.off_delay, rule.chatter_window if rule.chatter_count else 0.0)
    tail = [(end + step * (i + 1), _normal(rule, i)) for i in range(int(hold / step) + 2)]
    state = RuleState()
    active = False
    for t, v in timeline:
        state, ts = evaluate(rule, state, sample(v, t, good=v is not None), t)
        active = ts[-1].kind is not C if ts else active
    chattering = state.chattering
    for t, v in tail:
        state, ts = evaluate(rule, state, sample(v, t), t)
        active = ts[-1].kind is not C if ts else active
    assert not active, f"still active after {hold} s of normal (chattering: {chattering})"


falling = st.lists(
    st.tuples(st.floats(min_value=0.01, max_value=30.0), st.floats(min_value=0.0, max_value=5.0)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(
    st.floats(min_value=-50, max_value=150),
    falling,
    st.booleans(),
    st.floats(min_value=1, max_value=200),
    st.integers(min_value=3, max_value=20),
)
def test_forecast_never_fires_on_a_flat_or_falling_signal(
    start: float, steps: list[tuple[float, float]], flat: bool, limit: float, min_points: int
) -> None:
    rule = forecast(limit=limit, window="2m", horizon="1d", min_points=min_points, min_r2=0)
    t, v, timeline = 0.0, start, []
    for dt, fall in steps:
        t += dt
        v = v if flat else v - fall
        timeline.append((t, v))
    assert run(rule, timeline) == []


def test_forecast_does_not_flap_at_the_horizon() -> None:
    """Raised within the horizon; once active it holds until the estimate is beyond 1.2 x the horizon."""
    from agent.rules.kinds import observe

    rule = forecast(horizon="10m", min_points=3)
    memo = None
    for t, v in ramp(47, 0.05, 299):  # ends at 61.95 %: the limit 95 % is 661 s (11 min) away
        memo, _ = observe(rule, None, memo, sample(v, t), t)
    last = sample(62.0, 300)
    _, fresh = observe(rule, None, memo, last, 300.0)
    _, held = observe(rule, W, memo, last, 300.0)
    assert fresh is not None and fresh.severity is None  # 11 min > 10 min: not raised
    assert held is not None and held.severity is W and held.data["seconds_to_limit"] == 660  # but kept
    memo = None
    for t, v in ramp(40, 0.05, 300):  # ends at 55 %: 800 s away, more than 1.2 x the horizon
        memo, gone = observe(rule, W, memo, sample(v, t), t)
    assert gone is not None and gone.severity is None


# -- what a restart keeps (agent.rules.saved) ----------------------------------------------------


def _roundtrip(rule: Any, state: RuleState, shift: float) -> RuleState:
    """Save at monotonic 1000 / wall 5000, restore after a restart whose monotonic clock is ``shift`` behind."""
    import json

    from agent.rules.saved import restored_state, saved_state

    saved = json.loads(json.dumps(saved_state(state, to_wall=4000.0)))  # what the outbox file holds
    assert state.active is not None
    return restored_state(rule, state.active, state.threshold, saved, to_mono=-4000.0 - shift)


def test_a_forecast_keeps_its_window_across_a_restart() -> None:
    rule = ForecastRule.model_validate(
        {"id": "due", "machine": "m1", "signal": "wear", "kind": "forecast", "limit": 95, "horizon": "10m"}
        | {"window": "5m"}
    )
    state = RuleState()
    for t in range(0, 400, 10):
        state, _ = evaluate(rule, state, sample(50 + 0.05 * t, t), float(t))
    assert state.active is W
    back = _roundtrip(rule, state, shift=500.0)
    assert back.active is W and back.memo.last == state.memo.last
    assert [(round(t + 500.0, 3), v) for t, v in back.memo.points] == list(state.memo.points)
    # a restart 40 s later: the trend goes on, the alert neither clears nor is raised again
    later, out = evaluate(rule, back, sample(50 + 0.05 * 430, 430), 430.0 - 500.0)
    assert out == [] and later.active is W


def test_a_stale_rule_keeps_its_last_change_and_a_chattering_alert_stays_held() -> None:
    stale = StaleRule.model_validate(
        {"id": "s", "machine": "m1", "signal": "wear", "kind": "stale", "after": "60s", "chatter_count": 0}
    )
    state = RuleState()
    for t in (0.0, 30.0, 70.0):
        state, _ = evaluate(stale, state, sample(7, t), t)
    assert state.active is W
    back = _roundtrip(stale, state, shift=100.0)
    assert back.memo.changed_at == state.memo.changed_at - 100.0 and back.memo.value == 7
    assert evaluate(stale, back, sample(7, 90), 90.0 - 100.0)[1] == []  # still stuck: no clear, no raise

    door = fault(chatter_count=3, chatter_window="10m")
    steps = [(0.0, 1), (5.0, 0), (10.0, 1), (15.0, 0), (20.0, 1)]
    state = RuleState()
    for t, v in steps:
        state, _ = evaluate(door, state, sample(v, t), t)
    assert state.chattering
    back = _roundtrip(door, state, shift=0.0)
    assert back.chattering and back.raises == state.raises
    assert evaluate(door, back, sample(0, 30), 30.0)[1] == []  # normal again, but held: not cleared


def test_a_saved_state_that_does_not_fit_is_ignored() -> None:
    from agent.rules.saved import restored_state

    plain = RuleState(active=W, threshold=80.0)
    assert restored_state(threshold(), W, 80.0, None, 0.0) == plain
    assert restored_state(threshold(), W, 80.0, {"raises": ["x"]}, 0.0) == plain  # damaged
    broken = {"forecast": {"points": [[1.0]], "last": 2.0}}
    assert restored_state(threshold(), W, 80.0, broken, 0.0) == plain  # not a forecast rule: memo ignored
