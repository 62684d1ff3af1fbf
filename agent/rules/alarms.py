"""The ``alarms`` rule: a machine's own OPC UA alarms (condition events) -> the agent's transitions.

Pure, like the rest of :mod:`agent.rules`: (state, events, now) -> (new state, transitions); no I/O,
no clock reads. Every condition is its own alert, keyed ``<machine>/<rule>/<condition>`` where
``<condition>`` is :func:`condition_key` of its source and name. A condition event's verdict is:

================================================  ===============================================
the event says                                    verdict
================================================  ===============================================
active, OPC UA severity >= ``min_severity``       the severity by :func:`severity_of`; what the
                                                  alert is about is (OPC UA severity, message),
                                                  so a change of either is an ``updated`` event
inactive (ActiveState false, or disabled)         normal: the alert clears
active, severity below ``min_severity``           normal (an alert already raised clears)
================================================  ===============================================

and the shared lifecycle (:func:`agent.rules.lifecycle`: on-delay, off-delay, repeat, chattering)
turns verdicts into raised / updated / cleared, exactly as for a signal's rule.

ConditionRefresh: between ``refresh_start`` and ``refresh_end`` the server reports every condition
it still retains. At ``refresh_end`` every alert of this rule that the refresh did not report as
active is judged normal (it cleared while the agent was not listening), so nothing stays active
that is not. An alert restored from the alert log after a restart (:func:`restore`) is active
without a known message: the first report of its condition adopts it without an event (nothing
is raised twice), and a refresh that does not report it clears it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from agent.config.rules import AlarmsRule
from agent.model import ConditionEvent, Severity, Transition, TransitionKind
from agent.rules import RuleState, lifecycle
from agent.rules.kinds import Condition

KEY_MAX = 64  # characters of the <condition> part of an alert key
_UNSAFE = re.compile(r"[^-_.A-Za-z0-9]+")


def severity_of(opc_severity: int) -> Severity:
    """OPC UA severity (1-1000) -> the agent's: 667-1000 critical, 334-666 warning, 1-333 info."""
    if opc_severity >= 667:
        return Severity.CRITICAL
    if opc_severity >= 334:
        return Severity.WARNING
    return Severity.INFO


def condition_key(source: str, name: str, condition_id: str | None = None) -> str:
    """The ``<condition>`` part of an alert key: ``<source>.<name>``, made safe for a topic level.

    Every run of characters outside ``[-_.A-Za-z0-9]`` becomes one ``_``. Without a source and a
    name, the condition's node id is used. A key longer than :data:`KEY_MAX` is cut and ends in a
    short hash of the whole text, so two long names stay two keys.
    """
    text = ".".join(p for p in (source.strip(), name.strip()) if p) or (condition_id or "")
    safe = _UNSAFE.sub("_", text).strip("_") or "condition"
    if len(safe) <= KEY_MAX:
        return safe
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return f"{safe[: KEY_MAX - 9]}-{digest}"


@dataclass(frozen=True, slots=True)
class AlarmsState:
    """What an alarms rule remembers: per condition key its lifecycle state and its last event.

    Never mutated: every change makes a new one. ``refreshing`` holds the keys a running
    ConditionRefresh has reported (None when none is running). Conditions that are normal and no
    longer needed for chattering are forgotten, so it stays as big as the machine's live alarms.
    """

    states: Mapping[str, RuleState] = field(default_factory=dict)
    last: Mapping[str, ConditionEvent] = field(default_factory=dict)
    refreshing: frozenset[str] | None = None

    @property
    def active(self) -> dict[str, Severity]:
        """Condition key -> severity of every alert of this rule that is active now."""
        return {k: s.active for k, s in self.states.items() if s.active is not None}


def restore(rule: AlarmsRule, active: Mapping[str, Severity]) -> AlarmsState:
    """The state after a restart, from the alert log's active alerts (key -> severity) of the machine."""
    prefix = f"{rule.machine}/{rule.id}/"
    states = {k[len(prefix) :]: RuleState(active=s) for k, s in active.items() if k.startswith(prefix)}
    return AlarmsState(states=states)


def _verdict(rule: AlarmsRule, event: ConditionEvent) -> Condition:
    if not event.active or event.severity < rule.min_severity:
        return Condition(None)
    return Condition(severity_of(event.severity), key=(event.severity, event.message))


def _transition(
    rule: AlarmsRule, key: str, event: ConditionEvent, kind: TransitionKind, severity: Severity, wall: float
) -> Transition:
    state = "cleared" if kind is TransitionKind.CLEARED else "active"
    message = event.message or f"{event.source or key} {event.name}: {state}".replace("  ", " ")
    return Transition(
        machine=rule.machine,
        rule=rule.id,
        signal=None,
        kind=kind,
        severity=severity,
        value=event.severity,
        threshold=None,
        message=message,
        time=wall,
        extra={"kind": rule.kind, "condition": event.name, "source": event.source, "condition_id": event.condition_id},
        part=key,
    )


def _judge(
    rule: AlarmsRule, state: AlarmsState, key: str, event: ConditionEvent, now: float, wall: float
) -> tuple[AlarmsState, list[Transition]]:
    """One condition's event (or, on a tick, its last event again) through the lifecycle."""
    before = state.states.get(key, RuleState())

    def emit(kind: TransitionKind, severity: Severity, threshold: float | None, chattering: bool) -> Transition:
        t = _transition(rule, key, event, kind, severity, wall)
        return replace(t, extra={**t.extra, "chattering": True}) if chattering else t

    after, transitions = lifecycle(rule, before, _verdict(rule, event), now, emit)
    states, last = dict(state.states), dict(state.last)
    if _forgettable(rule, after, now):
        states.pop(key, None)
        last.pop(key, None)
    else:
        states[key] = after
        last[key] = event
    return replace(state, states=states, last=last), transitions


def _forgettable(rule: AlarmsRule, s: RuleState, now: float) -> bool:
    """Normal, nothing pending, and no raise recent enough to count towards chattering."""
    idle = s.active is None and s.pending_since is None
    return idle and all(now - t >= rule.chatter_window for t in s.raises)


def _gone(event: ConditionEvent | None, key: str, machine: str, wall: float) -> ConditionEvent:
    """The event that stands for a condition the refresh no longer reports."""
    source, name = (event.source, event.name) if event else ("", key)
    what = f"{source} {name}".strip()
    return ConditionEvent(
        "condition",
        machine,
        event.notifier if event else "",
        wall,
        condition_id=event.condition_id if event else None,
        source=source,
        name=name,
        active=False,
        severity=event.severity if event else 0,
        message=f"{what} is no longer active (it cleared while the agent was not listening)",
    )


def _refresh_end(rule: AlarmsRule, state: AlarmsState, now: float, wall: float) -> tuple[AlarmsState, list[Transition]]:
    seen = state.refreshing or frozenset()
    state = replace(state, refreshing=None)
    out: list[Transition] = []
    for key in [k for k, s in state.states.items() if s.active is not None or s.pending_since is not None]:
        if key in seen:
            continue
        event = state.last.get(key)
        if event is not None and not event.active:
            continue  # already known to be normal: its off-delay runs on
        state, ts = _judge(rule, state, key, _gone(event, key, rule.machine, wall), now, wall)
        out += ts
    return state, out


def on_events(
    rule: AlarmsRule, state: AlarmsState, events: Iterable[ConditionEvent], now: float
) -> tuple[AlarmsState, list[Transition]]:
    """Apply condition events (in the order they came) to one alarms rule. Pure.

    Events of another notifier than the rule's ``source`` are not this rule's. ``now`` is
    monotonic seconds; each transition's time is its event's ``time``.
    """
    out: list[Transition] = []
    for event in events:
        if event.notifier != rule.source:
            continue
        if event.kind == "refresh_start":
            state = replace(state, refreshing=frozenset())
            continue
        if event.kind == "refresh_end":
            if state.refreshing is not None:
                state, ts = _refresh_end(rule, state, now, event.time)
                out += ts
            continue
        key = condition_key(event.source, event.name, event.condition_id)
        if state.refreshing is not None and event.active:
            state = replace(state, refreshing=state.refreshing | {key})
        state, ts = _judge(rule, state, key, event, now, event.time)
        out += ts
    return state, out


def alarms_tick(rule: AlarmsRule, state: AlarmsState, now: float, wall: float) -> tuple[AlarmsState, list[Transition]]:
    """Time passes: each condition's last event again, so off-delays expire, repeats go out and held
    (chattering) alerts clear on time. Transitions carry the time ``wall``. Pure."""
    out: list[Transition] = []
    for key, event in list(state.last.items()):
        state, ts = _judge(rule, state, key, event, now, wall)
        out += ts
    return state, out
