"""The flood gate is pure: transitions and time in, what to send out. Tables and a property."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AlertsSection
from agent.model import Severity, Transition, TransitionKind
from agent.rules.flood import FloodState, admit, flood_tick

R, U, C = TransitionKind.RAISED, TransitionKind.UPDATED, TransitionKind.CLEARED
W, CR = Severity.WARNING, Severity.CRITICAL
CFG = AlertsSection(flood_count=3, flood_window=60.0)


def tr(rule: str, kind: TransitionKind, severity: Severity = W, t: float = 0.0) -> Transition:
    return Transition("m1", rule, rule, kind, severity, 1, None, f"{rule} {kind.value}", 1_700_000_000 + t)


def sent(out: list[Transition]) -> list[tuple[str, TransitionKind]]:
    return [(t.rule, t.kind) for t in out]


def test_under_the_limit_everything_passes() -> None:
    state, out = admit(CFG, "m1", FloodState(), [tr("a", R), tr("b", R), tr("a", C), tr("c", R)], 0.0)
    assert sent(out) == [("a", R), ("b", R), ("a", C), ("c", R)]
    # raises older than the window do not count
    state, out = admit(CFG, "m1", state, [tr("d", R)], 61.0)
    assert sent(out) == [("d", R)] and not state.flooding


def test_off_when_flood_count_is_zero() -> None:
    off = AlertsSection(flood_count=0)
    _, out = admit(off, "m1", FloodState(), [tr(str(i), R) for i in range(50)], 0.0)
    assert len(out) == 50


def test_flood_is_summarised_and_reconciled_when_it_ends() -> None:
    upstream: dict[str, Severity] = {}

    def track(out: list[Transition]) -> None:
        for t in out:
            if t.kind is C:
                upstream.pop(t.key, None)
            else:
                upstream[t.key] = t.severity

    state, out = admit(CFG, "m1", FloodState(), [tr("a", R), tr("b", R), tr("c", R), tr("d", R), tr("e", R)], 0.0)
    track(out)
    assert sent(out) == [("a", R), ("b", R), ("c", R), ("flood", R)]
    assert out[-1].extra == {"kind": "flood", "held_events": 1, "held_alerts": ["m1/d"]} and out[-1].signal is None
    assert "m1 raised more than 3 alerts within 1 min" in out[-1].message
    # a critical while flooding escalates the flood alert at once
    state, out = admit(CFG, "m1", state, [tr("e", U, CR, 1)], 1.0)
    track(out)
    assert sent(out) == [("flood", U)] and out[0].severity is CR and "now with critical alerts" in out[0].message
    # more held: the count goes out at most once per flood_window, not on every change
    state, out = admit(CFG, "m1", state, [tr("a", C, t=2), tr("b", U, CR, 2), tr("f", R, t=2), tr("f", C, t=3)], 3.0)
    assert out == []
    state, out = flood_tick(CFG, "m1", state, 40.0, 1_700_000_040, upstream)
    assert out == []
    state, out = admit(CFG, "m1", state, [tr("g", R, t=59), tr("g", C, t=59)], 59.0)
    state, out = flood_tick(CFG, "m1", state, 61.0, 1_700_000_061, upstream)
    track(out)
    assert sent(out) == [("flood", U)] and out[0].extra["held_events"] == 9
    assert "9 event(s) held so far (a, b, d, e, f and 1 more)" in out[0].message
    state, out = flood_tick(CFG, "m1", state, 62.0, 1_700_000_062, upstream)
    assert out == []
    # calm (at most flood_count // 2 events in the last window): cleared, then each alert brought up to date
    state, out = flood_tick(CFG, "m1", state, 118.9, 1_700_000_119, upstream)
    assert out == []
    state, out = flood_tick(CFG, "m1", state, 119.5, 1_700_000_119, upstream)
    track(out)
    assert sent(out) == [("flood", C), ("d", R), ("e", R), ("a", C), ("b", U)]  # f, g came and went: nothing
    assert not state.flooding and state.held == ()
    assert upstream == {"m1/b": CR, "m1/c": W, "m1/d": W, "m1/e": CR}


def test_state_stays_bounded() -> None:
    state = FloodState()
    for i in range(2000):
        state, _ = admit(CFG, "m1", state, [tr(f"r{i % 7}", R if i % 2 == 0 else C, t=i)], float(i) / 10)
    assert len(state.raises) <= CFG.flood_count + 1 and len(state.produced) <= CFG.flood_count + 1
    assert len(state.held) <= 7


rule_events = st.lists(
    st.tuples(st.sampled_from("abcde"), st.sampled_from([W, CR]), st.floats(0, 20), st.booleans()), max_size=80
)


@settings(max_examples=300, deadline=None)
@given(rule_events, st.integers(min_value=1, max_value=5), st.floats(min_value=5, max_value=60))
def test_sent_lifecycles_stay_whole(events: list[tuple[str, Severity, float, bool]], count: int, window: float) -> None:
    """Whatever the gate holds and releases, upstream never sees two raises without a clear, nor a stray clear."""
    cfg = AlertsSection(flood_count=count, flood_window=window)
    actual: dict[str, Severity] = {}  # the rules' own view
    upstream: dict[str, Severity] = {}
    state, now = FloodState(), 0.0

    def deliver(out: list[Transition]) -> None:
        for t in out:
            if t.rule == "flood":
                continue
            if t.kind is R:
                assert t.key not in upstream
                upstream[t.key] = t.severity
            elif t.kind is U:
                assert t.key in upstream
                upstream[t.key] = t.severity
            else:
                assert upstream.pop(t.key, None) is not None

    for rule, severity, dt, toggle in events:
        now += dt
        key = f"m1/{rule}"
        kind: Any
        if key not in actual:
            kind = R
            actual[key] = severity
        elif toggle:
            kind = C
            del actual[key]
        else:
            kind = U
            actual[key] = severity
        state, out = admit(cfg, "m1", state, [tr(rule, kind, severity, now)], now)
        deliver(out)
        state, out = flood_tick(cfg, "m1", state, now, now, upstream)
        deliver(out)
    state, out = flood_tick(cfg, "m1", state, now + 2 * window, now, upstream)
    deliver(out)
    assert not state.flooding
    assert upstream == actual  # once calm, upstream has caught up with every alert
