"""Tool changes as the rules see them (pure): a tool_life counter falling back, a forecast's signal
dropping by more than ``change_drop``; reported once, on the sample that shows it."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import ForecastRule, ThresholdRule, ToolLifeRule
from agent.model import Quality, Sample
from agent.rules import RuleState, ToolChange, evaluate, tick, tool_change

T0 = 1_700_000_000.0


def tool_life(**kw: Any) -> ToolLifeRule:
    doc = {"id": "punch", "machine": "m1", "signal": "strokes", "kind": "tool_life", "limit": 1000, **kw}
    return ToolLifeRule.model_validate(doc)


def forecast(**kw: Any) -> ForecastRule:
    doc = {"id": "due", "machine": "m1", "signal": "wear", "kind": "forecast", "limit": 95, "horizon": "30m", **kw}
    return ForecastRule.model_validate(doc)


def changes(rule: Any, steps: list[tuple[float, float | None]]) -> list[tuple[float, ToolChange]]:
    """Feed (time, value) steps (None: a bad read); after each, a tick judging the same value again."""
    state = RuleState()
    out = []
    for t, v in steps:
        good = v is not None
        sample = Sample("m1", rule.signal, v, Quality.GOOD if good else Quality.BAD, T0 + t)
        after, _ = evaluate(rule, state, sample, t)
        if (c := tool_change(state.memo, after.memo)) is not None:
            out.append((t, c))
        ticked, _ = tick(rule, after, sample if good else None, t + 0.5, T0 + t + 0.5)
        assert tool_change(after.memo, ticked.memo) is None  # a tick never reports a change (again)
        state = ticked
    return out


@pytest.mark.parametrize(
    ("rule", "steps", "expected"),
    [
        # counting up: the counter falls back when the tool is changed
        (tool_life(), [(0, 10), (1, 600), (2, 990), (3, 2)], [(3, ToolChange(990, 1000, T0 + 3))]),
        # the same value again, or a bad read in between, is no change
        (tool_life(), [(0, 500), (1, 500), (2, None), (3, 500), (4, 700)], []),
        # a bad read between the last count and the new tool
        (tool_life(), [(0, 800), (1, None), (2, 0)], [(2, ToolChange(800, 1000, T0 + 2))]),
        # two changes
        (
            tool_life(),
            [(0, 900), (1, 0), (2, 400), (3, 1)],
            [(1, ToolChange(900, 1000, T0 + 1)), (3, ToolChange(400, 1000, T0 + 3))],
        ),
        # counting down to 0: a new tool starts high; the first tool's life is not known (first seen mid-life)
        (
            tool_life(limit=None, direction="down"),
            [(0, 300), (1, 50), (2, 1000), (3, 400), (4, 100), (5, 1000)],
            [(2, ToolChange(None, None, T0 + 2)), (5, ToolChange(900, 1000, T0 + 5))],
        ),
        # counting down to 10
        (
            tool_life(limit=10, direction="down"),
            [(0, 20), (1, 510), (2, 10), (3, 510)],
            [(1, ToolChange(None, None, T0 + 1)), (3, ToolChange(500, 500, T0 + 3))],
        ),
        # forecast: a drop by more than change_drop (default limit / 10 = 9.5; 70 -> 60.6 is not one)
        (forecast(), [(0, 50), (60, 70), (120, 60.6), (180, 50.0)], [(180, ToolChange(60.6, 95, T0 + 180))]),
        (forecast(change_drop=5), [(0, 50), (60, 44.9)], [(60, ToolChange(50, 95, T0 + 60))]),
        (
            forecast(change_drop=5),
            [(0, 50), (60, 45.1), (120, None), (180, 2)],
            [(180, ToolChange(45.1, 95, T0 + 180))],
        ),
    ],
)
def test_tool_changes(
    rule: Any, steps: list[tuple[float, float | None]], expected: list[tuple[float, ToolChange]]
) -> None:
    assert changes(rule, steps) == expected


def test_other_kinds_never_report_a_tool_change() -> None:
    rule = ThresholdRule.model_validate(
        {"id": "w", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80}
    )
    assert changes(rule, [(0, 90), (1, 0), (2, 90), (3, 0)]) == []


def test_the_counter_memory_is_kept_while_the_value_stays() -> None:
    """No new memory per sample for an unchanged counter (a thousand signals are judged every poll)."""
    rule = tool_life()
    state, _ = evaluate(rule, RuleState(), Sample("m1", "strokes", 5, Quality.GOOD, T0), 0)
    again, _ = evaluate(rule, state, Sample("m1", "strokes", 5, Quality.GOOD, T0 + 1), 1)
    assert again.memo is state.memo
