"""Rules are pure: tables of (sample, time) in, transitions out, plus hypothesis properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import FaultRule, ThresholdRule
from agent.model import Quality, Sample, Severity, TransitionKind
from agent.rules import RuleState, evaluate, render_message

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


# -- properties --------------------------------------------------------------------------------

values = st.one_of(st.none(), st.floats(min_value=0, max_value=120, allow_nan=False))
steps = st.lists(st.tuples(st.floats(min_value=0.0, max_value=5.0), values), max_size=60)
rules = st.one_of(
    st.builds(
        lambda d, on, off: threshold(deadband=d, on_delay=on, off_delay=off),
        st.floats(0, 10),
        st.floats(0, 5),
        st.floats(0, 5),
    ),
    st.builds(lambda on, off: fault(on_delay=on, off_delay=off), st.floats(0, 5), st.floats(0, 5)),
)


def _timeline(deltas: list[tuple[float, Any]]) -> list[tuple[float, Any]]:
    t, out = 0.0, []
    for dt, v in deltas:
        t += dt
        out.append((t, v))
    return out


@settings(max_examples=300, deadline=None)
@given(rules, steps)
def test_never_two_raises_without_a_clear(rule: Any, deltas: list[tuple[float, Any]]) -> None:
    active = False
    for _, kind, _ in run(rule, _timeline(deltas)):
        if kind is R:
            assert not active
            active = True
        elif kind is C:
            assert active
            active = False
        else:
            assert active  # updates only while active


@settings(max_examples=300, deadline=None)
@given(rules, steps, st.floats(min_value=0.5, max_value=3.0))
def test_every_raised_alert_clears_once_normal_longer_than_off_delay(
    rule: Any, deltas: list[tuple[float, Any]], step: float
) -> None:
    timeline = _timeline(deltas)
    end = timeline[-1][0] if timeline else 0.0
    normal = 0 if isinstance(rule, FaultRule) else 0.0  # 0 is under every limit and not a fault
    tail = [(end + step * (i + 1), normal) for i in range(int(rule.off_delay / step) + 2)]
    active = False
    for _, kind, _ in run(rule, timeline + tail):
        active = kind is not C
    assert not active


def test_template_format_specs_apply_to_numbers() -> None:
    rule = threshold(message="wear {value:.1f}{unit} over {threshold:.0f}{unit}")
    _, [t] = evaluate(rule, RuleState(), sample(81.234), 0.0, "%")
    assert t.message == "wear 81.2% over 80%"
    _, [t] = evaluate(threshold(), RuleState(), sample(1234567.0), 0.0)
    assert "1.23457e+06" in t.message  # a huge float is shown short, never crashes
