"""What each rule kind thinks of one sample: :func:`observe` -> (the kind's new memory, a verdict).

Pure, like the rest of :mod:`agent.rules`: no I/O, no clock; ``now`` is monotonic seconds passed
in. A kind that needs history keeps it in an immutable, bounded memo (tuples and frozen
dataclasses) that :class:`~agent.rules.RuleState` carries between samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config.rules import (
    CodeRule,
    FaultRule,
    ForecastRule,
    SignalRule,
    StaleRule,
    ThresholdRule,
    ToolLifeRule,
)
from agent.model import Sample, Severity, Value

FORECAST_MAX_POINTS = 240  # history points kept per forecast rule (thinned evenly over its window)
FORECAST_HOLD = 1.2  # an active forecast clears when its estimate is beyond 1.2 x horizon (a deadband)


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule kind's verdict on one value: the severity it asks for (None = normal).

    ``key`` says what the alert is about (a fault code): a new key while active is an update.
    ``fields`` go into message templates, ``data`` into the event's ``data``; ``value`` replaces
    the sample's value as the reading shown (a stale rule judging on its gate signal's sample).
    """

    severity: Severity | None
    threshold: float | None = None
    key: Any = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    value: Value | None = None


def _number(value: Value) -> float | None:
    if isinstance(value, (str, bool)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _truthy(value: Value) -> bool:
    return bool(value) if not isinstance(value, str) else value.strip() not in ("", "0")


def human_duration(seconds: float) -> str:
    """A duration as a technician says it: "less than a minute", "about 12 min", "about 3.5 h"."""
    if seconds < 60:
        return "less than a minute"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"about {round(seconds / 3600, 1):g} h"
    return f"about {round(seconds / 86400, 1):g} days"


# -- threshold and fault: no memory -------------------------------------------------------------


def _threshold(rule: ThresholdRule, active: Severity | None, value: float) -> Condition:
    levels = [(Severity.CRITICAL, rule.critical), (Severity.WARNING, rule.warning)]
    lowest: float | None = None
    for severity, limit in levels:
        if limit is None:
            continue
        lowest = limit
        if value >= limit:
            return Condition(severity, limit)
        # Deadband: an alert at this level (or above) clears only below limit - deadband.
        if active is not None and active >= severity and value >= limit - rule.deadband:
            return Condition(severity, limit)
    return Condition(None, lowest)


# -- code: a fault-code register ----------------------------------------------------------------


def _as_code(value: Value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _code(rule: CodeRule, value: Value) -> Condition | None:
    code = _as_code(value)
    if code is None:
        return None
    if code in rule.normal:
        return Condition(None, fields={"code": code, "code_text": "no fault"}, data={"code": code})
    entry = rule.codes.get(code)
    if entry is None:
        text = "a code not in the code table: look it up in the machine's manual"
        severity = rule.severity
    else:
        text, severity = entry.message, entry.severity or rule.severity
    return Condition(
        Severity.parse(severity),
        key=code,
        fields={"code": code, "code_text": text},
        data={"code": code, "code_text": text},
    )


# -- tool changes: what tool_life and forecast rules see besides their verdict ---------------------


@dataclass(frozen=True, slots=True)
class ToolChange:
    """A tool change one sample showed: a tool_life counter fell back, or a forecast's signal dropped
    by more than ``change_drop``. ``used`` and ``limit`` are in the signal's units (``used`` None: the
    old tool's life is not known); ``time`` is the sample's wall clock."""

    used: float | None
    limit: float | None
    time: float


# -- tool_life: a counter against the tool's life -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolMemo:
    last: float | None = None  # the counter's last value
    new_at: float | None = None  # counting down: the counter when the tool was new (None: not seen)
    change: ToolChange | None = None  # the change the latest sample showed


def _tool_memo(rule: ToolLifeRule, memo: Any, value: float, wall: float) -> ToolMemo:
    """The counter's memory after ``value``: a counter falling back (counting down: jumping up) is a
    tool change. The same memo when nothing changed (no allocation per sample)."""
    m = memo if isinstance(memo, ToolMemo) else ToolMemo()
    if m.last == value and m.change is None:
        return m
    if m.last is None:
        return ToolMemo(value, None, None)
    if rule.direction == "up":
        if value < m.last:
            return ToolMemo(value, None, ToolChange(m.last, rule.end, wall))
        return ToolMemo(value, None, None)
    if value > m.last:  # counting down: a new tool starts high again
        used, life = (m.new_at - m.last, m.new_at - rule.end) if m.new_at is not None else (None, None)
        return ToolMemo(value, value, ToolChange(used, life, wall))
    return ToolMemo(value, m.new_at, None)


def _tool_life(rule: ToolLifeRule, value: float) -> Condition:
    up = rule.direction == "up"
    end = rule.end
    remaining = end - value if up else value - end
    fields = {"remaining": max(remaining, 0.0), "limit": end}
    data = {"remaining": remaining}
    if remaining <= 0:
        return Condition(Severity.CRITICAL, end, fields=fields, data=data)
    if rule.warning_remaining is not None and remaining <= rule.warning_remaining:
        at = end - rule.warning_remaining if up else end + rule.warning_remaining
        return Condition(Severity.WARNING, at, fields=fields, data=data)
    return Condition(None, end, fields=fields, data=data)


# -- forecast: least squares over a window ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForecastMemo:
    points: tuple[tuple[float, float], ...] = ()  # (monotonic time, value), oldest first, bounded
    last: float | None = None  # the last value seen (a fall from it is a tool change)
    change: ToolChange | None = None  # the tool change the latest sample showed


@dataclass(frozen=True, slots=True)
class Fit:
    slope: float  # signal units per second
    r2: float
    at_now: float  # the fitted value now
    points: int


def fit(points: tuple[tuple[float, float], ...], now: float) -> Fit | None:
    """Least-squares line through ``points`` (None if degenerate). Times are centred for accuracy."""
    n = len(points)
    if n < 2:
        return None
    tm = sum(t for t, _ in points) / n
    vm = sum(v for _, v in points) / n
    stt = stv = svv = 0.0
    for t, v in points:
        dt, dv = t - tm, v - vm
        stt += dt * dt
        stv += dt * dv
        svv += dv * dv
    if stt <= 0:
        return None
    slope = stv / stt
    r2 = (stv * stv) / (stt * svv) if svv > 0 else 0.0
    return Fit(slope, min(r2, 1.0), vm + slope * (now - tm), n)


def _remember(rule: ForecastRule, memo: ForecastMemo, value: float, now: float, wall: float) -> ForecastMemo:
    if memo.last is not None and value < memo.last - rule.drop:  # the tool was changed: start again
        return ForecastMemo(((now, value),), value, ToolChange(memo.last, rule.limit, wall))
    kept = tuple(p for p in memo.points if now - p[0] <= rule.window)
    spacing = rule.window / FORECAST_MAX_POINTS
    if len(kept) >= 2 and now - kept[-2][0] < spacing:
        kept = kept[:-1]  # thin: the newest point replaces the last one while that is too close
    return ForecastMemo((*kept, (now, value))[-FORECAST_MAX_POINTS - 1 :], value)


def _forecast(
    rule: ForecastRule, active: Severity | None, memo: Any, value: float, now: float, wall: float
) -> tuple[ForecastMemo, Condition]:
    memo = _remember(rule, memo if isinstance(memo, ForecastMemo) else ForecastMemo(), value, now, wall)
    normal = Condition(None, rule.limit, fields={"limit": rule.limit, "eta": "not within the horizon"})
    pts = memo.points
    if len(pts) < rule.min_points or pts[-1][0] - pts[0][0] < rule.window / 2:
        return memo, normal  # not enough history (just started, or a new tool)
    f = fit(pts, now)
    if f is None:
        return memo, normal
    span = pts[-1][0] - pts[0][0]
    scale = max(1.0, abs(rule.limit), max(abs(v) for _, v in pts))
    if f.slope * span <= 1e-9 * scale:
        return memo, normal  # flat or falling: never a forecast
    if active is None and f.r2 < rule.min_r2:
        return memo, normal  # too scattered to believe (an active forecast is kept while the trend holds)
    eta = max(0.0, (rule.limit - f.at_now) / f.slope)
    if eta > rule.horizon * (FORECAST_HOLD if active is not None else 1.0):
        return memo, normal
    per_minute = float(f"{f.slope * 60:.2g}")
    fields = {
        "limit": rule.limit,
        "eta": human_duration(eta),
        "seconds_to_limit": round(eta),
        "trend": per_minute,
    }
    data = {"seconds_to_limit": round(eta), "rise_per_minute": per_minute, "fit_r2": round(f.r2, 3)}
    return memo, Condition(Severity.parse(rule.severity), rule.limit, fields=fields, data=data)


# -- stale: a value that stops changing where it should change -----------------------------------


@dataclass(frozen=True, slots=True)
class StaleMemo:
    value: Value | None = None  # the watched signal's value when it last changed
    changed_at: float | None = None
    running: bool = False  # the only_while gate (always True without one)
    running_since: float | None = None


def _stale(rule: StaleRule, memo: Any, sample: Sample, now: float) -> tuple[StaleMemo, Condition | None]:
    m = memo if isinstance(memo, StaleMemo) else StaleMemo()
    value = sample.value
    assert value is not None
    if rule.only_while is not None and sample.signal == rule.only_while and sample.signal != rule.signal:
        running = _truthy(value)
        if running != m.running or m.running_since is None:
            m = StaleMemo(m.value, m.changed_at, running, now)
    else:
        changed = m.value is None or m.changed_at is None
        if not changed and m.value != value:
            a, b = _number(value), _number(m.value) if m.value is not None else None
            changed = a is None or b is None or abs(a - b) > rule.tolerance
        if changed:
            m = StaleMemo(value, now, m.running, m.running_since)
    if m.changed_at is None:
        return m, None  # the watched signal was not seen yet
    if rule.only_while is None:
        start = m.changed_at
    elif not m.running or m.running_since is None:
        return m, Condition(None, rule.after, value=m.value)
    else:
        start = max(m.changed_at, m.running_since)
    unchanged = now - start
    fields = {"unchanged_for": human_duration(unchanged), "after": human_duration(rule.after)}
    data = {"unchanged_seconds": round(unchanged)}
    severity = Severity.parse(rule.severity) if unchanged >= rule.after else None
    return m, Condition(severity, rule.after, fields=fields, data=data, value=m.value)


# -- the dispatch ------------------------------------------------------------------------------------


def observe(
    rule: SignalRule, active: Severity | None, memo: Any, sample: Sample, now: float
) -> tuple[Any, Condition | None]:
    """The kind's verdict on a good sample, and its new memory. None: the value cannot be judged.

    A new memory of a tool_life or forecast rule may carry the :class:`ToolChange` this sample
    showed (see :func:`tool_change`)."""
    value = sample.value
    assert value is not None
    if isinstance(rule, StaleRule):
        return _stale(rule, memo, sample, now)
    if isinstance(rule, FaultRule):
        return memo, Condition(Severity.parse(rule.severity) if _truthy(value) else None)
    if isinstance(rule, CodeRule):
        return memo, _code(rule, value)
    number = _number(value)
    if number is None:
        return memo, None
    if isinstance(rule, ThresholdRule):
        return memo, _threshold(rule, active, number)
    if isinstance(rule, ToolLifeRule):
        return _tool_memo(rule, memo, number, sample.time), _tool_life(rule, number)
    if isinstance(rule, ForecastRule):
        return _forecast(rule, active, memo, number, now, sample.time)
    raise TypeError(f"unknown rule kind: {rule!r}")  # pragma: no cover - config forbids it


def tool_change(before: Any, after: Any) -> ToolChange | None:
    """The tool change an evaluation saw, given the kind's memory before and after it (None: none).

    Only a new memory can hold one: a bad sample, or a tick that judges the same value again, keeps
    the memory and so never reports a change twice."""
    if after is before:
        return None
    change = getattr(after, "change", None)
    return change if isinstance(change, ToolChange) else None
