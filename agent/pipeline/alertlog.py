"""The alert lifecycle: transitions become CloudEvents, committed with the alert state they change.

:class:`AlertLog` owns the ``seq`` counter and the persisted state of every active alert. A
transition counts as emitted only once :meth:`AlertLog.commit` has returned: the event is then on
disk (synced) in the outbox, together with the new alert state, so a restart neither loses the event
nor raises an alert that is still active a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from agent.pipeline.outbox import AsyncOutbox, DropReport

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
        )


def _next_state(prior: ActiveAlert | None, t: Transition) -> ActiveAlert:
    """The alert's state after a raise or update. An update keeps the raise time, and keeps the
    acknowledgement unless the severity rose (an escalation must be seen again)."""
    kept = prior if prior is not None and t.kind is TransitionKind.UPDATED else None
    state = ActiveAlert(t.key, t.severity, t.threshold, t.message, kept.since if kept else t.time, t.signal, t.value)
    if kept is not None and kept.acknowledged and t.severity <= kept.severity:
        state = dataclasses.replace(state, ack_by=kept.ack_by, ack_at=kept.ack_at, ack_note=kept.ack_note)
    return state


ACKNOWLEDGED_TYPE = "andon.alert.acknowledged"


Observer = Callable[[Transition, StoredEvent], None]


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
    ) -> None:
        self._outbox = outbox
        self._gateway = gateway
        self._site = site
        self._on_commit = list(on_commit)
        self._observers = list(observers)
        self._lock = asyncio.Lock()
        self._last_seq = 0
        self.active: dict[str, ActiveAlert] = {}

    async def load(self) -> None:
        """Read the seq counter and the active alerts from the outbox (call once after opening it)."""
        self._last_seq = await self._outbox.call(self._outbox.sync.last_seq)
        stored = await self._outbox.call(self._outbox.sync.alerts)
        self.active = {k: ActiveAlert.from_json(k, v) for k, v in stored.items()}

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
            seq = self._last_seq + 1
            event_id = str(uuid.uuid4())
            body = dropped_notice(
                report, seq=seq, event_id=event_id, gateway=self._gateway, site=self._site, now=time.time()
            )
            event = StoredEvent(seq, event_id, Severity.CRITICAL, json.dumps(body, separators=(",", ":")).encode())
            await self._outbox.call(self._outbox.sync.append, [event], {}, report.count)
            self._last_seq = seq
        log.warning("event seq=%d %s: %s", seq, DROPPED_TYPE, body["data"]["message"])
        for wake in self._on_commit:
            wake()
        return event

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
        async with self._lock:
            event = await self._append_one(type, subject, data, severity, at, {})
        log.info("event seq=%d %s %s", event.seq, type, subject)
        for wake in self._on_commit:
            wake()
        return event

    async def _append_one(
        self,
        type: str,
        subject: str,
        data: Mapping[str, Any],
        severity: Severity,
        at: float | None,
        changes: dict[str, dict[str, Any] | None],
    ) -> StoredEvent:
        """Build and commit one event (with ``changes`` to the alert state); the caller holds the lock."""
        seq = self._last_seq + 1
        event_id = str(uuid.uuid4())
        body = {
            "specversion": "1.0",
            "id": event_id,
            "source": f"/andon/{self._gateway}",
            "type": type,
            "subject": subject,
            "time": rfc3339(time.time() if at is None else at),
            "datacontenttype": "application/json",
            "data": {k: _json_value(v) for k, v in data.items()}
            | {"seq": seq, "gateway": self._gateway, "site": self._site},
        }
        machine = data.get("machine")
        event = StoredEvent(
            seq,
            event_id,
            severity,
            json.dumps(body, separators=(",", ":")).encode(),
            type,
            subject,
            machine if isinstance(machine, str) else None,
        )
        await self._outbox.call(self._outbox.sync.append, [event], changes)
        self._last_seq = seq
        return event

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
            event = await self._append_one(
                ACKNOWLEDGED_TYPE, key, acknowledged_data(acked), alert.severity, at, {key: acked.to_json()}
            )
            self.active = {**self.active, key: acked}
        log.info("event seq=%d %s %s by %s", event.seq, ACKNOWLEDGED_TYPE, key, by)
        for wake in self._on_commit:
            wake()
        return event

    async def commit(self, transitions: Sequence[Transition]) -> list[StoredEvent]:
        """Commit the transitions' events and alert state in one synced transaction.

        Raises :class:`~agent.errors.OutboxError` when the disk refuses; nothing then counts as
        emitted and the caller keeps its old rule state, so the transition is tried again.
        """
        if not transitions:
            return []
        async with self._lock:
            events: list[StoredEvent] = []
            changes: dict[str, dict[str, Any] | None] = {}
            active = dict(self.active)
            seq = self._last_seq
            for t in transitions:
                seq += 1
                event_id = str(uuid.uuid4())
                body = cloudevent(t, seq=seq, event_id=event_id, gateway=self._gateway, site=self._site)
                events.append(StoredEvent(seq, event_id, t.severity, json.dumps(body, separators=(",", ":")).encode()))
                if t.kind is TransitionKind.CLEARED:
                    active.pop(t.key, None)
                    changes[t.key] = None
                else:
                    active[t.key] = _next_state(active.get(t.key), t)
                    changes[t.key] = active[t.key].to_json()
            await self._outbox.call(self._outbox.sync.append, events, changes)
            self._last_seq = seq
            self.active = active
        for t, e in zip(transitions, events, strict=True):
            log.info("event seq=%d %s %s %s: %s", e.seq, t.kind.value, t.key, t.severity.label, t.message)
            for observe in self._observers:
                observe(t, e)
        for wake in self._on_commit:
            wake()
        return events
