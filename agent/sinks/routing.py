"""Routing: which of the outbox's events a sink gets, and as what. Pure functions, no I/O.

Every sink has a :class:`Route` (its ``min_severity``, its ``machines`` and the event types its kind
takes) and a set of alerts it has *seen*: alerts it was sent a ``raised`` of and no ``cleared`` since.
:func:`route` decides for one event, :func:`plan` for a batch in ``seq`` order. The rules (README,
"Routing"):

- An alert lifecycle event (``andon.alert.*``) of an alert the sink has seen always goes to it,
  whatever its severity or machine, up to and including its ``cleared``: a sink never keeps an
  incident open because an update fell below its level or its ``machines`` changed on reload.
- An alert the sink has not seen reaches it with its first ``raised`` or ``updated`` event at or
  above ``min_severity`` on a machine in ``machines``; that event is presented as ``raised``. A
  ``cleared`` or ``acknowledged`` of an alert the sink has not seen is skipped: nothing of an alert
  that never reached the sink's level is sent. One exception: at ``min_severity`` info every alert
  reached the level when it was raised, so its ``cleared`` follows even if the sink did not see the
  raise (it came before the sink was configured, or a full outbox dropped it).
- ``andon.test`` (``send-test``) reaches every sink its ``data.sinks`` names (every sink when it
  names none); ``min_severity`` and ``machines`` do not apply, and the alert-only kinds (ntfy,
  pagerduty) take it too, so that the command proves their uplink.
- Any other event (the dropped-events notice, usage events) is not an alert: ``min_severity`` does
  not apply; ``machines`` does when the event names a machine (``data.machine``); only the kinds
  that take every type get it.

An event skipped for a sink just advances that sink's cursor. Presenting an ``updated`` as
``raised`` changes the body's ``type`` only, never its ``id`` or ``seq`` (:func:`present`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent.model import Severity, StoredEvent

ALERT_PREFIX = "andon.alert."
RAISED = "andon.alert.raised"
UPDATED = "andon.alert.updated"
CLEARED = "andon.alert.cleared"
ACKNOWLEDGED = "andon.alert.acknowledged"
TEST = "andon.test"
_OPENING = frozenset({RAISED, UPDATED})


@dataclass(frozen=True, slots=True)
class Route:
    """What one sink takes. ``machines`` None means every machine."""

    sink: str
    min_severity: Severity = Severity.INFO
    machines: frozenset[str] | None = None
    alerts_only: bool = False  # the kind takes andon.alert.* (and andon.test) only: ntfy, pagerduty

    def takes(self, event_type: str) -> bool:
        """Whether the sink's kind takes events of this type at all."""
        return not self.alerts_only or event_type.startswith(ALERT_PREFIX) or event_type == TEST

    def describe(self) -> str:
        """One line for ``check``."""
        machines = ", ".join(sorted(self.machines)) if self.machines is not None else "all"
        takes = "andon.alert.* and andon.test" if self.alerts_only else "every event type"
        return f"min_severity {self.min_severity.label}; machines: {machines}; takes {takes}"


class Step(NamedTuple):
    """The decision for one event: the type the sink gets it as (None: skipped), and whether the
    sink has the event's alert open afterwards (unchanged for an event that is not about an alert)."""

    type: str | None
    seen: bool


def is_alert_event(e: StoredEvent) -> bool:
    return e.type.startswith(ALERT_PREFIX) and bool(e.subject)


def route(r: Route, e: StoredEvent, seen: bool) -> Step:
    """Decide for one described event (see :func:`described`). ``seen``: the sink has the alert open."""
    if not r.takes(e.type):
        return Step(None, seen)
    if is_alert_event(e):
        if seen:
            return Step(e.type, e.type != CLEARED)
        if e.type in _OPENING and e.severity >= r.min_severity and _machine_ok(r, e):
            return Step(RAISED, True)
        if e.type == CLEARED and r.min_severity is Severity.INFO and _machine_ok(r, e):
            return Step(CLEARED, False)  # raised before the sink saw it: it did reach "info"
        return Step(None, False)
    if e.type == TEST:
        targets = test_targets(e)
        return Step(TEST if targets is None or r.sink in targets else None, seen)
    return Step(e.type if _machine_ok(r, e) else None, seen)


def _machine_ok(r: Route, e: StoredEvent) -> bool:
    return r.machines is None or e.machine is None or e.machine in r.machines


class Send(NamedTuple):
    """One event to send, and the type the sink gets it as."""

    event: StoredEvent
    type: str


@dataclass(frozen=True, slots=True)
class Plan:
    """A batch routed for one sink: the events to send, in order, and how many were skipped."""

    sends: list[Send]
    skipped: int


def plan(r: Route, events: Sequence[StoredEvent], seen: Set[str]) -> Plan:
    """Route a batch of described events (oldest first). ``seen``: the sink's open alerts before it."""
    opened: dict[str, bool] = {}
    sends: list[Send] = []
    for event in events:
        alert = is_alert_event(event)
        key = event.subject or ""
        step = route(r, event, opened.get(key, key in seen) if alert else False)
        if alert:
            opened[key] = step.seen
        if step.type is not None:
            sends.append(Send(event, step.type))
    return Plan(sends, len(events) - len(sends))


def seen_changes(sends: Iterable[Send]) -> dict[str, bool]:
    """How the sink's seen set changes once ``sends`` are accepted: alert key -> open (True) or closed.

    A sent ``raised`` opens the alert, a sent ``cleared`` closes it; the last one wins. Events set
    aside as dead letters must not be passed: the sink never got them.
    """
    changes: dict[str, bool] = {}
    for send in sends:
        if send.event.subject and send.type in (RAISED, CLEARED):
            changes[send.event.subject] = send.type == RAISED
    return changes


def apply_changes(seen: Set[str], changes: Mapping[str, bool]) -> set[str]:
    """The seen set after ``changes`` (see :func:`seen_changes`)."""
    return {k for k in seen if changes.get(k, True)} | {k for k, is_open in changes.items() if is_open}


def present(event: StoredEvent, as_type: str) -> StoredEvent:
    """The event as the sink gets it: itself, or the same ``id`` and ``seq`` with ``type`` changed."""
    if event.type == as_type:
        return event
    body = json.loads(event.body)
    body["type"] = as_type
    return dataclasses.replace(event, body=json.dumps(body, separators=(",", ":")).encode(), type=as_type)


def test_targets(event: StoredEvent) -> frozenset[str] | None:
    """The sinks an ``andon.test`` event names in ``data.sinks`` (None: every sink). Parses the body:
    test events are rare."""
    try:
        sinks = json.loads(event.body).get("data", {}).get("sinks")
    except (ValueError, AttributeError):
        return None
    return frozenset(s for s in sinks if isinstance(s, str)) if isinstance(sinks, list) else None


def described(event: StoredEvent) -> StoredEvent:
    """The event with ``type``, ``subject`` and ``machine`` filled from its body when ``type`` is empty."""
    if event.type:
        return event
    try:
        doc: Any = json.loads(event.body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return dataclasses.replace(event, type="?")  # not a CloudEvent: taken only by sinks that take every type
    data = doc.get("data")
    subject, machine = doc.get("subject"), data.get("machine") if isinstance(data, dict) else None
    return dataclasses.replace(
        event,
        type=str(doc.get("type") or "?"),
        subject=subject if isinstance(subject, str) else None,
        machine=machine if isinstance(machine, str) else None,
    )
