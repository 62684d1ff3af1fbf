"""The alert lifecycle: transitions become CloudEvents, committed with the alert state they change.

:class:`AlertLog` owns the persisted state of every active alert. A transition counts as emitted
only once :meth:`AlertLog.commit` has returned: the event is then on disk (synced) in the outbox,
together with the new alert state, so a restart neither loses the event nor raises an alert that is
still active a second time.

``seq`` is not kept here: the outbox numbers each event inside the transaction that stores it
(:meth:`Outbox.emit`), so no caller can reuse one. Cancelling a commit (a reload stopping a
machine, a stop cutting a sink short) never leaves :attr:`AlertLog.active` behind the disk: the
worker thread's job runs to its end, the cancelled commit waits for it, applies what it did, and
only then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.outbox import AsyncOutbox, Draft, DropReport, Write, finished, succeeded
from agent.pipeline.usage import ToolChanged
from agent.pipeline.usagelog import UsageLog, UsageStep

log = logging.getLogger("andon.alerts")

DROPPED_TYPE = "andon.outbox.dropped"
EVENT_TYPES = {
    TransitionKind.RAISED: "andon.alert.raised",
    TransitionKind.UPDATED: "andon.alert.updated",
    TransitionKind.CLEARED: "andon.alert.cleared",
}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):  # never reaches here, but JSON must stay valid
        return None
    return value


def cloudevent(t: Transition, *, seq: int, event_id: str, gateway: str, site: str | None) -> dict[str, Any]:
    """The CloudEvents 1.0 (JSON format) form of one transition, exactly as the README ("Upstream events") fixes it."""
    data: dict[str, Any] = {k: _json_value(v) for k, v in t.extra.items()}  # never over the fields below
    data |= {
        "alert": t.key,
        "machine": t.machine,
        "rule": t.rule,
        "signal": t.signal,
        "severity": t.severity.label,
        "value": _json_value(t.value),
        "threshold": _json_value(t.threshold),
        "message": t.message,
        "seq": seq,
        "gateway": gateway,
        "site": site,
    }
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/andon/{gateway}",
        "type": EVENT_TYPES[t.kind],
        "subject": t.key,
        "time": rfc3339(t.time),
        "datacontenttype": "application/json",
        "data": data,
    }


def dropped_notice(
    report: DropReport, *, seq: int, event_id: str, gateway: str, site: str | None, now: float
) -> dict[str, Any]:
    """The CloudEvent that tells the upstream how many events the full outbox dropped (README)."""
    message = (
        f"the outbox of gateway {gateway} was full and dropped {report.count} event(s) "
        f"(seq {report.first_seq}..{report.last_seq}, {report.critical} critical) since {rfc3339(report.since)}; "
        "check the gateway's uplink"
    )
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/andon/{gateway}",
        "type": DROPPED_TYPE,
        "subject": f"{gateway}/outbox",
        "time": rfc3339(now),
        "datacontenttype": "application/json",
        "data": {
            "dropped": report.count,
            "dropped_critical": report.critical,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "since": rfc3339(report.since),
            "severity": "warning",
            "message": message,
            "seq": seq,
            "gateway": gateway,
            "site": site,
        },
    }


def acknowledged_data(alert: ActiveAlert) -> dict[str, Any]:
    """``data`` of an ``andon.alert.acknowledged`` event: the alert's fields plus ``by``, ``note``, ``since``."""
    machine, rule, *condition = alert.key.split("/", 2)
    data: dict[str, Any] = {
        "alert": alert.key,
        "machine": machine,
        "rule": rule,
        "signal": alert.signal,
        "severity": alert.severity.label,
        "value": alert.value,
        "threshold": alert.threshold,
        "message": alert.message,
        "since": rfc3339(alert.since),
        "by": alert.ack_by,
        "note": alert.ack_note,
    }
    if condition:
        data["condition"] = condition[0]
    return data


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """The persisted state of one active alert, with its acknowledgement (if someone gave one)."""

    key: str
    severity: Severity
    threshold: float | None
    message: str
    since: float  # wall clock of the raise
    signal: str | None = None
    value: Any = None  # the reading of the latest raise or update
    ack_by: str | None = None
    ack_at: float | None = None  # wall clock of the acknowledgement
    ack_note: str | None = None
    rule_state: dict[str, Any] | None = None  # what the rule needs after a restart (agent.rules.saved)

    @property
    def acknowledged(self) -> bool:
        return self.ack_at is not None

    def to_json(self) -> dict[str, Any]:
        out = {
            "severity": self.severity.label,
            "threshold": self.threshold,
            "message": self.message,
            "since": self.since,
            "signal": self.signal,
            "value": _json_value(self.value),
        }
        if self.ack_at is not None:
            out |= {"ack_by": self.ack_by, "ack_at": self.ack_at, "ack_note": self.ack_note}
        if self.rule_state:
            out["rule"] = self.rule_state
        return out

    @classmethod
    def from_json(cls, key: str, d: dict[str, Any]) -> ActiveAlert:
        return cls(
            key,
            Severity.parse(d["severity"]),
            d.get("threshold"),
            d.get("message", ""),
            d["since"],
            signal=d.get("signal"),
            value=d.get("value"),
            ack_by=d.get("ack_by"),
            ack_at=d.get("ack_at"),
            ack_note=d.get("ack_note"),
            rule_state=d.get("rule"),
        )


def _next_state(prior: ActiveAlert | None, t: Transition, rule_state: dict[str, Any] | None) -> ActiveAlert:
    """The alert's state after a raise or update. An update keeps the raise time, and keeps the
    acknowledgement unless the severity rose (an escalation must be seen again); ``rule_state``
    replaces the rule's saved state (an update without one keeps it)."""
    kept = prior if prior is not None and t.kind is TransitionKind.UPDATED else None
    if rule_state is None and kept is not None:
        rule_state = kept.rule_state
    state = ActiveAlert(
        t.key,
        t.severity,
        t.threshold,
        t.message,
        kept.since if kept else t.time,
        t.signal,
        t.value,
        rule_state=rule_state,
    )
    if kept is not None and kept.acknowledged and t.severity <= kept.severity:
        state = dataclasses.replace(state, ack_by=kept.ack_by, ack_at=kept.ack_at, ack_note=kept.ack_note)
    return state


ACKNOWLEDGED_TYPE = "andon.alert.acknowledged"


Observer = Callable[[Transition, StoredEvent], None]
EventObserver = Callable[[StoredEvent], None]  # told of each committed usage event (no transition)


class AlertLog:
    """Turns transitions into committed events. Safe to call from several tasks (one lock)."""

    def __init__(
        self,
        outbox: AsyncOutbox,
        *,
        gateway: str,
        site: str | None,
        on_commit: Sequence[Callable[[], None]] = (),
        observers: Sequence[Observer] = (),
        usage: UsageLog | None = None,
        usage_observers: Sequence[EventObserver] = (),
    ) -> None:
        self._outbox = outbox
        self.usage = usage  # the usage fold ([usage] enabled): it commits with the transitions
        self._gateway = gateway
        self._site = site
        self._on_commit = list(on_commit)
        self._observers = list(observers)
        self._usage_observers = list(usage_observers)
        self._lock = asyncio.Lock()
        self.active: dict[str, ActiveAlert] = {}

    async def load(self) -> None:
        """Read the active alerts from the outbox (call once after opening it)."""
        stored = await self._outbox.call(self._outbox.sync.alerts)
        self.active = {k: ActiveAlert.from_json(k, v) for k, v in stored.items()}
        if self.usage is not None:
            self.usage.load(await self._outbox.call(self._outbox.sync.read, "SELECT machine, state FROM usage_state"))

    def _draft(
        self,
        make_body: Callable[[int, str], dict[str, Any]],
        severity: Severity,
        type: str = "",
        subject: str | None = None,
        machine: str | None = None,
    ) -> Draft:
        """An event the outbox numbers when it stores it (the body is built on its worker thread)."""
        event_id = str(uuid.uuid4())

        def build(seq: int) -> StoredEvent:
            body = json.dumps(make_body(seq, event_id), separators=(",", ":")).encode()
            return StoredEvent(seq, event_id, severity, body, type, subject, machine)

        return build

    async def _emit(
        self,
        drafts: Sequence[Draft],
        changes: Mapping[str, dict[str, Any] | None],
        then: Callable[[list[StoredEvent]], None],
        reported_drops: int = 0,
        also: Write | None = None,
    ) -> list[StoredEvent]:
        """Commit on the worker thread (the caller holds the lock); ``then`` applies the outcome here.

        ``then`` runs once the events are on disk, also when the caller was cancelled meanwhile (the
        job always runs to its end), and only then does the cancellation go on: what is in memory
        follows what the disk holds. On :class:`~agent.errors.OutboxError` it does not run.
        """
        job = self._outbox.submit(self._outbox.sync.emit, drafts, changes, reported_drops, also)
        try:
            events = await finished(job)
        except asyncio.CancelledError:
            if succeeded(job):
                then(job.result())
            raise
        then(events)
        return events

    def _wake(self) -> None:
        for wake in self._on_commit:
            wake()

    async def report_drops(self) -> StoredEvent | None:
        """Commit one ``andon.outbox.dropped`` event for the drops not yet reported (if any).

        The event takes the next ``seq`` like any other and is kept like a critical event (dropped
        last). Committing it marks those drops reported in the same transaction, so a crash neither
        loses the report nor sends it twice (other than as a batch in flight).
        """
        async with self._lock:
            report = await self._outbox.call(self._outbox.sync.drop_report)
            if report is None:
                return None
            now = time.time()
            draft = self._draft(
                lambda seq, event_id: dropped_notice(
                    report, seq=seq, event_id=event_id, gateway=self._gateway, site=self._site, now=now
                ),
                Severity.CRITICAL,
                DROPPED_TYPE,
                f"{self._gateway}/outbox",
            )
            (event,) = await self._emit([draft], {}, self._notice_committed, report.count)
        return event

    def _notice_committed(self, events: list[StoredEvent]) -> None:
        for event in events:
            log.warning("event seq=%d %s: %s", event.seq, DROPPED_TYPE, json.loads(event.body)["data"]["message"])
        self._wake()

    async def record(
        self,
        type: str,
        subject: str,
        data: Mapping[str, Any],
        severity: Severity,
        *,
        at: float | None = None,
    ) -> StoredEvent:
        """Commit one event that is not an alert transition, with the next ``seq``.

        For ``andon.test``, ``andon.alert.acknowledged``, ``andon.tool.changed``,
        ``andon.usage.summary`` and the like: a CloudEvent of ``type`` and ``subject`` whose ``data``
        is the caller's plus ``seq``, ``gateway`` and ``site`` (those three always win). Like
        :meth:`commit`, it is on disk (synced) when this returns, the deliveries are woken, and
        :class:`~agent.errors.OutboxError` means nothing was committed. Transition observers are not
        called (there is no transition). ``at`` (the event's ``time``) defaults to now.
        """

        def recorded(events: list[StoredEvent]) -> None:
            log.info("event seq=%d %s %s", events[0].seq, type, subject)
            self._wake()

        async with self._lock:
            (event,) = await self._emit([self._event_draft(type, subject, data, severity, at)], {}, recorded)
        return event

    def _event_draft(
        self, type: str, subject: str, data: Mapping[str, Any], severity: Severity, at: float | None
    ) -> Draft:
        """A CloudEvent of ``type`` whose ``data`` is the caller's plus ``seq``, ``gateway`` and ``site``."""
        when = time.time() if at is None else at
        fields = {k: _json_value(v) for k, v in data.items()}
        machine = data.get("machine")

        def body(seq: int, event_id: str) -> dict[str, Any]:
            return {
                "specversion": "1.0",
                "id": event_id,
                "source": f"/andon/{self._gateway}",
                "type": type,
                "subject": subject,
                "time": rfc3339(when),
                "datacontenttype": "application/json",
                "data": fields | {"seq": seq, "gateway": self._gateway, "site": self._site},
            }

        return self._draft(body, severity, type, subject, machine if isinstance(machine, str) else None)

    async def acknowledge(self, key: str, by: str, note: str | None, *, at: float | None = None) -> StoredEvent | None:
        """Commit ``andon.alert.acknowledged`` for the active alert ``key`` and mark it acknowledged.

        The event (the alert's fields plus ``data.by`` and ``data.note``) and the alert's new state
        are one synced transaction, so the acknowledgement survives a restart with the alert.
        Returns None when the alert is not active (nothing committed). Acknowledging again
        replaces who and when (another event). :class:`~agent.errors.OutboxError`: nothing changed.
        """
        at = time.time() if at is None else at
        async with self._lock:
            alert = self.active.get(key)
            if alert is None:
                return None
            acked = dataclasses.replace(alert, ack_by=by, ack_at=at, ack_note=note)

            def acknowledged(events: list[StoredEvent]) -> None:
                self.active = {**self.active, key: acked}
                log.info("event seq=%d %s %s by %s", events[0].seq, ACKNOWLEDGED_TYPE, key, by)
                self._wake()

            draft = self._event_draft(ACKNOWLEDGED_TYPE, key, acknowledged_data(acked), alert.severity, at)
            (event,) = await self._emit([draft], {key: acked.to_json()}, acknowledged)
        return event

    async def save_rule_states(self, rule_states: Mapping[str, dict[str, Any]]) -> None:
        """Keep new saved rule states with alerts that are still active (no event; one synced
        transaction). For a forecast's window, which changes while its alert stays active; the
        caller bounds the rate. :class:`~agent.errors.OutboxError`: nothing changed."""
        async with self._lock:
            saved = {
                key: dataclasses.replace(alert, rule_state=rule_states[key])
                for key, alert in self.active.items()
                if key in rule_states
            }
            if not saved:
                return

            def kept(_: list[StoredEvent]) -> None:
                self.active = {**self.active, **saved}

            await self._emit([], {key: a.to_json() for key, a in saved.items()}, kept)

    async def commit(
        self,
        transitions: Sequence[Transition],
        rule_states: Mapping[str, dict[str, Any]] | None = None,
        tools: Sequence[tuple[str, ToolChanged]] = (),
    ) -> list[StoredEvent]:
        """Commit the transitions' events and alert state in one synced transaction.

        ``rule_states``: per alert key, what its rule needs after a restart (agent.rules.saved),
        kept with the state of the alerts raised or updated here. With the usage fold, the same
        transaction holds its new state, the ``andon.tool.changed`` events of ``tools``
        (``(machine, tool change)`` pairs a rule saw) and the summaries of periods the transitions
        closed; their events follow the transitions' (returned after them).
        Raises :class:`~agent.errors.OutboxError` when the disk refuses; nothing then counts as
        emitted and the caller keeps its old rule state, so the transition is tried again. If the
        caller is cancelled meanwhile, :attr:`active` still follows what the disk holds (the
        observers see the events too), and then the cancellation goes on.
        """
        if not transitions and not tools:
            return []
        async with self._lock:
            drafts: list[Draft] = []
            changes: dict[str, dict[str, Any] | None] = {}
            active = dict(self.active)
            for t in transitions:
                body = functools.partial(self._alert_body, t)
                drafts.append(self._draft(body, t.severity, EVENT_TYPES[t.kind], t.key, t.machine))
                if t.kind is TransitionKind.CLEARED:
                    active.pop(t.key, None)
                    changes[t.key] = None
                else:
                    active[t.key] = _next_state(active.get(t.key), t, (rule_states or {}).get(t.key))
                    changes[t.key] = active[t.key].to_json()
            usage = self.usage.observe(transitions, tools) if self.usage is not None else None
            drafts += self._usage_drafts(usage)

            def committed(events: list[StoredEvent]) -> None:
                self.active = active
                for t, e in zip(transitions, events, strict=False):
                    log.info("event seq=%d %s %s %s: %s", e.seq, t.kind.value, t.key, t.severity.label, t.message)
                    for observe in self._observers:
                        observe(t, e)
                self._usage_committed(usage, events[len(transitions) :])

            return await self._emit(drafts, changes, committed, also=usage.write if usage is not None else None)

    def _usage_drafts(self, step: UsageStep | None) -> list[Draft]:
        if step is None:
            return []
        return [self._event_draft(r.type, r.subject, r.data, Severity.INFO, r.time) for r in step.events]

    def _usage_committed(self, step: UsageStep | None, events: Sequence[StoredEvent]) -> None:
        """The usage step is on disk: the fold's states follow; log its events and wake the deliveries."""
        if step is not None and self.usage is not None:
            self.usage.apply(step)
        for e in events:
            log.info("event seq=%d %s %s", e.seq, e.type, e.subject)
            for observe in self._usage_observers:
                observe(e)
        self._wake()

    async def commit_usage(self, make: Callable[[UsageLog], UsageStep]) -> list[StoredEvent]:
        """Commit what the usage fold does without a transition: ``make(usage)`` gives the step (the
        clock's :meth:`~agent.pipeline.usagelog.UsageLog.seen`, at start, on reload and at a stop too).

        Its state rows and events (the summaries of the periods that ended) are one synced
        transaction; :class:`~agent.errors.OutboxError`: nothing changed. Nothing without the fold.
        """
        usage = self.usage
        if usage is None:
            return []
        async with self._lock:
            step = make(usage)
            if not step.states:
                return []
            return await self._emit(
                self._usage_drafts(step), {}, lambda events: self._usage_committed(step, events), also=step.write
            )

    def _alert_body(self, t: Transition, seq: int, event_id: str) -> dict[str, Any]:
        return cloudevent(t, seq=seq, event_id=event_id, gateway=self._gateway, site=self._site)
