"""Rules: pure functions from (state, sample, now) to (new state, transitions).

No I/O and no clock reads in here: ``now`` is a monotonic time in seconds passed in by the caller,
the sample carries its own wall-clock time. Every rule kind only says what it thinks of one value
(:func:`condition`); the shared alarm lifecycle (:func:`evaluate`) adds on-delay, off-delay and
repeat, as ISA-18.2 and OPC UA Part 9 describe them. Bad-quality samples change nothing.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from typing import Any

from agent.config import FaultRule, Rule, ThresholdRule
from agent.model import Sample, Severity, Transition, TransitionKind, Value

DEFAULT_MESSAGES: dict[str, dict[TransitionKind, str]] = {
    "threshold": {
        TransitionKind.RAISED: "{signal} on {machine} is {value}{unit}, at or over the {severity} "
        "limit {threshold}{unit}: {action}",
        TransitionKind.UPDATED: "{signal} on {machine} is {value}{unit}, now {severity} "
        "(limit {threshold}{unit}): {action}",
        TransitionKind.CLEARED: "{signal} on {machine} is back to {value}{unit}, under the limit {threshold}{unit}",
    },
    "fault": {
        TransitionKind.RAISED: "{signal} on {machine} has tripped ({severity}): check the machine and reset the fault",
        TransitionKind.UPDATED: "{signal} on {machine} is still tripped ({severity}): check the machine "
        "and reset the fault",
        TransitionKind.CLEARED: "{signal} on {machine} has been reset",
    },
}

_ACTIONS = {
    Severity.INFO: "no action needed yet",
    Severity.WARNING: "plan service at the next stop",
    Severity.CRITICAL: "act now",
}


@dataclass(frozen=True, slots=True)
class RuleState:
    """What a rule remembers between samples. Only ``active`` survives a restart."""

    active: Severity | None = None
    threshold: float | None = None  # the limit of the active severity
    pending_since: float | None = None  # condition true, waiting for on_delay
    normal_since: float | None = None  # condition gone while active, waiting for off_delay
    last_sent: float | None = None  # when the last event of this alert was emitted (for repeat_every)


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule kind's verdict on one value: the severity it asks for (None = normal)."""

    severity: Severity | None
    threshold: float | None = None


def _threshold_condition(rule: ThresholdRule, active: Severity | None, value: float) -> Condition:
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


def condition(rule: Rule, active: Severity | None, value: Value) -> Condition | None:
    """The rule kind's verdict on ``value``, or None when the value cannot be judged (ignored)."""
    if isinstance(rule, ThresholdRule):
        if isinstance(value, (str, bool)):
            return None
        return _threshold_condition(rule, active, float(value))
    if isinstance(rule, FaultRule):
        tripped = bool(value) if not isinstance(value, str) else value.strip() not in ("", "0")
        return Condition(Severity.parse(rule.severity) if tripped else None)
    raise TypeError(f"unknown rule kind: {rule!r}")  # pragma: no cover - config forbids it


class _Shown(float):
    """A number in a message: shown for people by default, or as a template's format spec says."""

    def __format__(self, spec: str) -> str:
        if spec:
            return format(float(self), spec)
        v = float(self)
        return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0.0 else f"{v:.3g}"

    __str__ = __repr__ = lambda self: format(self, "")


def _display(value: Any) -> Any:
    if isinstance(value, float):
        return _Shown(value)
    return "" if value is None else value


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_message(template: str, fields: dict[str, Any]) -> str:
    """Fill a message template; unknown fields are left as they are (config load rejects them)."""
    return string.Formatter().vformat(template, (), _Fields(fields)).replace("\n", " ")


def template_fields(template: str) -> set[str]:
    """The field names a template uses (for validating user templates at load time)."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def _transition(
    rule: Rule,
    sample: Sample,
    kind: TransitionKind,
    severity: Severity,
    threshold: float | None,
    unit: str,
) -> Transition:
    fields = {
        "machine": rule.machine,
        "signal": rule.signal,
        "rule": rule.id,
        "value": _display(sample.value),
        "threshold": _display(threshold),
        "unit": f" {unit}" if unit and unit != "%" else unit,
        "severity": severity.label,
        "action": _ACTIONS[severity],
    }
    if rule.message is not None and kind is not TransitionKind.CLEARED:
        template = rule.message
    else:
        template = DEFAULT_MESSAGES[rule.kind][kind]
    return Transition(
        machine=rule.machine,
        rule=rule.id,
        signal=rule.signal,
        kind=kind,
        severity=severity,
        value=sample.value,
        threshold=threshold,
        message=render_message(template, fields),
        time=sample.time,
    )


def evaluate(
    rule: Rule, state: RuleState, sample: Sample, now: float, unit: str = ""
) -> tuple[RuleState, list[Transition]]:
    """Apply one sample to one rule. Pure: same inputs, same outputs.

    Lifecycle: a condition must hold for ``on_delay`` before the alert is raised; a change of
    severity while active is an ``updated`` event; the condition must stay normal for ``off_delay``
    before the alert clears; an active alert is re-sent as ``updated`` every ``repeat_every``.
    """
    if not sample.good or sample.value is None:
        return state, []
    cond = condition(rule, state.active, sample.value)
    if cond is None:
        return state, []

    if state.active is None:
        if cond.severity is None:
            return (state if state.pending_since is None else replace(state, pending_since=None)), []
        since = state.pending_since if state.pending_since is not None else now
        if now - since < rule.on_delay:
            return replace(state, pending_since=since), []
        t = _transition(rule, sample, TransitionKind.RAISED, cond.severity, cond.threshold, unit)
        return RuleState(active=cond.severity, threshold=cond.threshold, last_sent=now), [t]

    if cond.severity is None:
        since = state.normal_since if state.normal_since is not None else now
        if now - since < rule.off_delay:
            return replace(state, normal_since=since), []
        t = _transition(rule, sample, TransitionKind.CLEARED, state.active, state.threshold, unit)
        return RuleState(), [t]

    last_sent = state.last_sent if state.last_sent is not None else now  # e.g. restored after a restart
    if cond.severity != state.active or (rule.repeat_every is not None and now - last_sent >= rule.repeat_every):
        t = _transition(rule, sample, TransitionKind.UPDATED, cond.severity, cond.threshold, unit)
        return RuleState(active=cond.severity, threshold=cond.threshold, last_sent=now), [t]
    return replace(state, normal_since=None, last_sent=last_sent), []
