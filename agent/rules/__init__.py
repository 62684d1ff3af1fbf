"""Rules: pure functions from (state, sample, now) to (new state, transitions).

No I/O and no clock reads in here: ``now`` is a monotonic time in seconds passed in by the caller,
the sample carries its own wall-clock time. Every rule kind only says what it thinks of one value
(:func:`agent.rules.kinds.observe`, keeping its own bounded, immutable memory where it needs
history); the shared alarm lifecycle (:func:`evaluate`) adds on-delay, off-delay, repeat and
chattering, as ISA-18.2 and OPC UA Part 9 describe them. Bad-quality samples change nothing.

Time-based behaviour (off-delay expiry, repeat, staleness, forecasts) must not wait for a new value
(OPC UA subscriptions only deliver changes): the caller re-evaluates the last good sample on a
clock tick with :func:`tick`. Flood handling across a machine's rules is :mod:`agent.rules.flood`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent.config.rules import LifecycleBase, SignalRule
from agent.model import Sample, Severity, Transition, TransitionKind
from agent.rules.kinds import Condition, ToolChange, human_duration, observe, tool_change

__all__ = [
    "DEFAULT_MESSAGES",
    "Condition",
    "Emit",
    "RuleState",
    "ToolChange",
    "evaluate",
    "lifecycle",
    "render_message",
    "template_fields",
    "tick",
    "tool_change",
]

R, U, C = TransitionKind.RAISED, TransitionKind.UPDATED, TransitionKind.CLEARED

# The built-in texts per kind. {name} is the rule's `name` ("tool 1"), by default the signal id;
# {action} says what to do (per kind and severity); {note} is the chattering note or "".
DEFAULT_MESSAGES: dict[str, dict[TransitionKind, str]] = {
    "threshold": {
        R: "{name} on {machine} is {value}{unit}, at or over the {severity} limit {threshold}{unit}: {action}{note}",
        U: "{name} on {machine} is {value}{unit}, now {severity} (limit {threshold}{unit}): {action}{note}",
        C: "{name} on {machine} is back to {value}{unit}, under the limit {threshold}{unit}",
    },
    "fault": {
        R: "{name} on {machine} has tripped ({severity}): {action}{note}",
        U: "{name} on {machine} is still tripped ({severity}): {action}{note}",
        C: "{name} on {machine} has been reset",
    },
    "code": {
        R: "{machine} reports fault {code} on {name}: {code_text} ({severity}): {action}{note}",
        U: "{machine} now reports fault {code} on {name}: {code_text} ({severity}): {action}{note}",
        C: "{machine} reports no fault any more on {name} (code {code})",
    },
    "tool_life": {
        R: "{name} on {machine} has {remaining}{unit} of tool life left (counter {value}{unit}, life ends at "
        "{limit}{unit}): {action}{note}",
        U: "{name} on {machine} has {remaining}{unit} of tool life left (counter {value}{unit}, life ends at "
        "{limit}{unit}): {action}{note}",
        C: "{name} on {machine} has a new tool: counter at {value}{unit}, {remaining}{unit} of life left",
    },
    "forecast": {
        R: "{name} on {machine} reaches {limit}{unit} in {eta} (now {value}{unit}, rising {trend}{unit}/min): "
        "{action}{note}",
        U: "{name} on {machine} reaches {limit}{unit} in {eta} (now {value}{unit}, rising {trend}{unit}/min): "
        "{action}{note}",
        C: "{name} on {machine} no longer reaches {limit}{unit} within the forecast horizon (now {value}{unit})",
    },
    "stale": {
        R: "{name} on {machine} has not changed for {unchanged_for} (stuck at {value}{unit}) although it "
        "should: {action}{note}",
        U: "{name} on {machine} has not changed for {unchanged_for} (stuck at {value}{unit}): {action}{note}",
        C: "{name} on {machine} is no longer stuck (now {value}{unit})",
    },
}

_ACTIONS = {
    Severity.INFO: "no action needed yet",
    Severity.WARNING: "plan service at the next stop",
    Severity.CRITICAL: "act now",
}
_KIND_ACTIONS: dict[str, dict[Severity, str]] = {
    "fault": {
        Severity.WARNING: "check the machine and reset the fault",
        Severity.CRITICAL: "check the machine now, then reset the fault",
    },
    "code": {
        Severity.WARNING: "check the machine and reset the fault",
        Severity.CRITICAL: "check the machine now, then reset the fault",
    },
    "tool_life": {
        Severity.WARNING: "have a new tool ready and change it at the next stop",
        Severity.CRITICAL: "change the tool now",
    },
    "forecast": {
        Severity.WARNING: "plan the tool change before then",
        Severity.CRITICAL: "change the tool before then",
    },
    "stale": {
        Severity.WARNING: "check the sensor, its wiring and the PLC program",
        Severity.CRITICAL: "check the sensor, its wiring and the PLC program now",
    },
}


def _action(kind: str, severity: Severity) -> str:
    return _KIND_ACTIONS.get(kind, {}).get(severity, _ACTIONS[severity])


@dataclass(frozen=True, slots=True)
class RuleState:
    """What a rule remembers between samples. ``active`` and ``threshold`` survive a restart, and
    what :mod:`agent.rules.saved` keeps (a forecast's window, a stale rule's last change, chattering).

    Immutable and bounded: ``raises`` holds at most ``chatter_count`` times, ``memo`` is the
    kind's own bounded memory (a forecast's history, a stale rule's last change).
    """

    active: Severity | None = None
    threshold: float | None = None  # the limit of the active severity
    pending_since: float | None = None  # condition true, waiting for on_delay
    normal_since: float | None = None  # condition gone while active, waiting for off_delay
    last_sent: float | None = None  # when the last event of this alert was emitted (for repeat_every)
    key: Any = None  # what the active alert is about (a fault code): a new key is an update
    raises: tuple[float, ...] = ()  # when the alert was last raised (for chattering)
    chattering: bool = False  # held active: clears only after chatter_window of normal
    memo: Any = None  # the kind's own memory


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


def _chatter_note(rule: LifecycleBase) -> str:
    window = human_duration(rule.chatter_window).removeprefix("about ")
    return (
        f" (chattering: raised {rule.chatter_count} times within {window}; held active until it stays "
        f"normal for {window})"
    )


def _transition(
    rule: SignalRule,
    sample: Sample,
    kind: TransitionKind,
    severity: Severity,
    threshold: float | None,
    unit: str,
    cond: Condition,
    chattering: bool,
) -> Transition:
    value = cond.value if cond.value is not None else sample.value
    note = _chatter_note(rule) if chattering and kind is not C else ""
    fields = {
        "machine": rule.machine,
        "signal": rule.signal,
        "name": rule.name or rule.signal,
        "rule": rule.id,
        "value": _display(value),
        "threshold": _display(threshold),
        "unit": f" {unit}" if unit and unit != "%" else unit,
        "severity": severity.label,
        "action": _action(rule.kind, severity),
        "note": note,
    }
    fields |= {k: _display(v) for k, v in cond.fields.items()}
    if rule.message is not None and kind is not C:
        template = rule.message
        if note and "{note}" not in template:
            template += "{note}"
    else:
        template = DEFAULT_MESSAGES[rule.kind][kind]
    extra = dict(cond.data) | {"kind": rule.kind}
    if chattering and kind is not C:
        extra["chattering"] = True
    return Transition(
        machine=rule.machine,
        rule=rule.id,
        signal=rule.signal,
        kind=kind,
        severity=severity,
        value=value,
        threshold=threshold,
        message=render_message(template, fields),
        time=sample.time,
        extra=extra,
    )


def evaluate(
    rule: SignalRule, state: RuleState, sample: Sample, now: float, unit: str = ""
) -> tuple[RuleState, list[Transition]]:
    """Apply one sample to one rule. Pure: same inputs, same outputs.

    Lifecycle: a condition must hold for ``on_delay`` before the alert is raised; a change of
    severity (or of what the alert is about, e.g. the fault code) while active is an ``updated``
    event; the condition must stay normal for ``off_delay`` before the alert clears; an active
    alert is re-sent as ``updated`` every ``repeat_every``. Chattering: the ``chatter_count``-th
    raise within ``chatter_window`` is sent with a note, and the alert is then held active until its
    condition stayed normal for ``chatter_window`` (or ``off_delay``, if longer).
    """
    if not sample.good or sample.value is None:
        return state, []
    memo, cond = observe(rule, state.active, state.memo, sample, now)
    if memo is not state.memo:
        state = replace(state, memo=memo)
    if cond is None:
        return state, []

    def emit(kind: TransitionKind, severity: Severity, threshold: float | None, chattering: bool) -> Transition:
        return _transition(rule, sample, kind, severity, threshold, unit, cond, chattering)

    return lifecycle(rule, state, cond, now, emit)


Emit = Callable[[TransitionKind, Severity, float | None, bool], Transition]


def lifecycle(
    rule: LifecycleBase, state: RuleState, cond: Condition, now: float, emit: Emit
) -> tuple[RuleState, list[Transition]]:
    """The shared alarm lifecycle: one verdict (``cond``) on one alert at ``now`` -> its new state.

    On-delay, off-delay, repeat and chattering as :func:`evaluate` describes them; a new
    ``cond.key`` while active is an update. ``emit(kind, severity, threshold, chattering)`` builds
    the transition (each kind of rule words its own). Pure.
    """
    if state.active is None:
        if cond.severity is None:
            return (state if state.pending_since is None else replace(state, pending_since=None)), []
        since = state.pending_since if state.pending_since is not None else now
        if now - since < rule.on_delay:
            return replace(state, pending_since=since), []
        raises = state.raises
        if rule.chatter_count:
            raises = (*(t for t in raises if now - t < rule.chatter_window), now)[-rule.chatter_count :]
        chattering = bool(rule.chatter_count) and len(raises) >= rule.chatter_count
        t = emit(R, cond.severity, cond.threshold, chattering)
        new = RuleState(cond.severity, cond.threshold, None, None, now, cond.key, raises, chattering, state.memo)
        return new, [t]

    if cond.severity is None:
        since = state.normal_since if state.normal_since is not None else now
        hold = max(rule.off_delay, rule.chatter_window) if state.chattering else rule.off_delay
        if now - since < hold:
            return replace(state, normal_since=since), []
        t = emit(C, state.active, state.threshold, False)
        return RuleState(raises=state.raises, memo=state.memo), [t]

    last_sent = state.last_sent if state.last_sent is not None else now  # e.g. restored after a restart
    key = state.key if state.key is not None else cond.key  # restored: adopt what it is about now
    changed = cond.severity != state.active or key != cond.key
    if changed or (rule.repeat_every is not None and now - last_sent >= rule.repeat_every):
        t = emit(U, cond.severity, cond.threshold, state.chattering)
        return replace(
            state, active=cond.severity, threshold=cond.threshold, normal_since=None, last_sent=now, key=cond.key
        ), [t]
    if state.normal_since is None and state.last_sent == last_sent and state.key == key:
        return state, []
    return replace(state, normal_since=None, last_sent=last_sent, key=key), []


def tick(
    rule: SignalRule, state: RuleState, last: Sample | None, now: float, wall: float, unit: str = ""
) -> tuple[RuleState, list[Transition]]:
    """Time passes without a new value: judge the last good sample again at ``now`` (event time ``wall``).

    For a signal whose value has not changed (an OPC UA subscription delivers only changes), this is
    exactly what a fresh reading would say; it lets off-delays expire, repeats go out, stale
    signals and forecasts be noticed on time. Pure, like :func:`evaluate`.
    """
    if last is None or not last.good:
        return state, []
    return evaluate(rule, state, last._replace(time=wall), now, unit)
