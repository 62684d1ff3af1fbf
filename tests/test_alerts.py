"""The alert lifecycle: CloudEvents exactly as the README fixes them, committed with alert state."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.errors import OutboxError
from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.alertlog import ActiveAlert, AlertLog, cloudevent
from agent.pipeline.outbox import AsyncOutbox, Outbox

T0 = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ATTRIBUTES = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}
DATA_FIELDS = {
    "alert",
    "machine",
    "rule",
    "signal",
    "severity",
    "value",
    "threshold",
    "message",
    "seq",
    "gateway",
    "site",
}


def tr(
    kind: TransitionKind = TransitionKind.RAISED,
    *,
    machine: str = "press-1",
    rule: str = "tool1-wear",
    signal: str | None = "tool1_wear",
    severity: Severity = Severity.WARNING,
    value: Any = 81.5,
    threshold: float | None = 80.0,
    message: str = "press-1 tool1_wear 81.5 % over 80",
    time: float = T0,
    **extra: Any,
) -> Transition:
    return Transition(machine, rule, signal, kind, severity, value, threshold, message, time, extra)


# -- cloudevent() ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "type_"),
    [
        (TransitionKind.RAISED, "andon.alert.raised"),
        (TransitionKind.UPDATED, "andon.alert.updated"),
        (TransitionKind.CLEARED, "andon.alert.cleared"),
    ],
)
def test_cloudevent_has_exactly_the_contract_attributes(kind: TransitionKind, type_: str) -> None:
    ev = cloudevent(tr(kind), seq=42, event_id="ev-1", gateway="gw-press-line", site="plant-a")
    assert set(ev) == ATTRIBUTES
    assert ev["specversion"] == "1.0"
    assert ev["id"] == "ev-1"
    assert ev["source"] == "/andon/gw-press-line"
    assert ev["type"] == type_
    assert ev["subject"] == "press-1/tool1-wear"
    assert ev["datacontenttype"] == "application/json"
    assert ev["data"] == {
        "alert": "press-1/tool1-wear",
        "machine": "press-1",
        "rule": "tool1-wear",
        "signal": "tool1_wear",
        "severity": "warning",
        "value": 81.5,
        "threshold": 80.0,
        "message": "press-1 tool1_wear 81.5 % over 80",
        "seq": 42,
        "gateway": "gw-press-line",
        "site": "plant-a",
    }
    assert ev["data"]["alert"] == ev["subject"]
    assert json.loads(json.dumps(ev, allow_nan=False)) == ev  # plain, strict JSON


def test_cloudevent_time_is_rfc3339_utc_with_z() -> None:
    ev = cloudevent(tr(time=T0), seq=1, event_id="x", gateway="g", site=None)
    assert RFC3339_UTC.match(ev["time"]), ev["time"]
    assert ev["time"] == "2023-11-14T22:13:20.123Z"
    parsed = datetime.fromisoformat(ev["time"].replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(parsed.timestamp() - T0) < 0.001


def test_cloudevent_offline_alert_and_no_site() -> None:
    t = tr(
        rule="offline",
        signal=None,
        severity=Severity.CRITICAL,
        value=None,
        threshold=None,
        message="press-1 does not answer",
    )
    ev = cloudevent(t, seq=7, event_id="x", gateway="gw", site=None)
    assert ev["subject"] == ev["data"]["alert"] == "press-1/offline"
    assert ev["data"]["signal"] is None and ev["data"]["threshold"] is None and ev["data"]["value"] is None
    assert ev["data"]["site"] is None and ev["data"]["severity"] == "critical"


def test_cloudevent_extra_fields_go_into_data() -> None:
    ev = cloudevent(tr(code=12, remaining=0), seq=1, event_id="x", gateway="g", site="s")
    assert set(ev) == ATTRIBUTES
    assert set(ev["data"]) == DATA_FIELDS | {"code", "remaining"}
    assert ev["data"]["code"] == 12 and ev["data"]["remaining"] == 0


def test_cloudevent_nan_value_stays_valid_json() -> None:
    ev = cloudevent(tr(value=float("nan")), seq=1, event_id="x", gateway="g", site="s")
    assert ev["data"]["value"] is None
    json.dumps(ev, allow_nan=False)


# -- AlertLog.commit against a real outbox -----------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
async def outbox(db_path: Path) -> AsyncIterator[AsyncOutbox]:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        yield ob


async def open_log(ob: AsyncOutbox, **kw: Any) -> AlertLog:
    log = AlertLog(ob, gateway="gw-1", site="plant-a", **kw)
    await log.load()
    return log


def bodies(events: list[StoredEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in events]


async def test_commit_builds_stored_events_that_match_their_bodies(outbox: AsyncOutbox) -> None:
    log = await open_log(outbox)
    base = await outbox.call(outbox.sync.last_seq)
    events = await log.commit([tr(), tr(rule="fault", signal="fault", severity=Severity.CRITICAL)])
    assert [e.seq for e in events] == [base + 1, base + 2]
    for e, body in zip(events, bodies(events), strict=True):
        assert set(body) == ATTRIBUTES
        assert body["id"] == e.id and body["data"]["seq"] == e.seq
        assert body["source"] == "/andon/gw-1" and body["data"]["gateway"] == "gw-1"
        assert body["data"]["site"] == "plant-a"
        assert str(uuid.UUID(e.id)) == e.id
    assert events[1].severity is Severity.CRITICAL
    stored = await outbox.call(outbox.sync.pending, "s", 10)
    assert stored == events  # exactly what was returned is on disk
    assert await log.commit([]) == []


async def test_seq_strictly_increases_across_reopen_and_ids_are_unique(db_path: Path) -> None:
    seen: list[StoredEvent] = []
    for _ in range(3):
        async with AsyncOutbox(Outbox(db_path)) as ob:
            await ob.call(ob.sync.set_sinks, ["s"])
            log = await open_log(ob)
            seen += await log.commit([tr(), tr(TransitionKind.CLEARED)])
            seen += await log.commit([tr(rule=f"r{len(seen)}")])
            await ob.call(ob.sync.settle, "s", seen[-1].seq)  # even when everything was delivered
            assert await ob.call(ob.sync.depth) == 0
    seqs = [e.seq for e in seen]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    assert seqs == list(range(seqs[0], seqs[0] + 9))
    assert len({e.id for e in seen}) == len(seen)
    assert [json.loads(e.body)["data"]["seq"] for e in seen] == seqs


async def test_active_alerts_are_persisted_and_removed_on_clear(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        log = await open_log(ob)
        await log.commit([tr(time=T0), tr(rule="fault", signal="fault", severity=Severity.CRITICAL, time=T0)])
        await log.commit([tr(TransitionKind.UPDATED, severity=Severity.CRITICAL, threshold=95.0, time=T0 + 60)])
        assert set(log.active) == {"press-1/tool1-wear", "press-1/fault"}
        wear = log.active["press-1/tool1-wear"]
        assert (wear.severity, wear.threshold, wear.since) == (Severity.CRITICAL, 95.0, T0)  # since: the raise
        stored = await ob.call(ob.sync.alerts)
        assert stored["press-1/tool1-wear"] == {
            "severity": "critical",
            "threshold": 95.0,
            "message": "press-1 tool1_wear 81.5 % over 80",
            "since": T0,
            "signal": "tool1_wear",
            "value": 81.5,
        }

    async with AsyncOutbox(Outbox(db_path)) as ob:  # after a restart the alert is still known as active
        log = await open_log(ob)
        assert set(log.active) == {"press-1/tool1-wear", "press-1/fault"}
        assert log.active["press-1/tool1-wear"] == wear
        await log.commit([tr(TransitionKind.CLEARED, time=T0 + 120)])
        assert set(log.active) == {"press-1/fault"}
        assert set(await ob.call(ob.sync.alerts)) == {"press-1/fault"}

    async with AsyncOutbox(Outbox(db_path)) as ob:
        log = await open_log(ob)
        assert set(log.active) == {"press-1/fault"}


async def test_commit_calls_observers_and_wakes_after_the_commit(outbox: AsyncOutbox) -> None:
    woken: list[int] = []
    observed: list[tuple[str, int]] = []

    def wake() -> None:  # by now the events must be on disk
        woken.append(outbox.sync.depth())

    log = await open_log(outbox, on_commit=[wake], observers=[lambda t, e: observed.append((t.key, e.seq))])
    events = await log.commit([tr(), tr(rule="fault")])
    assert observed == [("press-1/tool1-wear", events[0].seq), ("press-1/fault", events[1].seq)]
    assert woken == [2]


async def test_failed_commit_changes_nothing(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        log = await open_log(ob)
        first = await log.commit([tr()])
        await ob.call(ob.sync.close)  # the disk goes away
        with pytest.raises(OutboxError):
            await log.commit([tr(TransitionKind.CLEARED), tr(rule="fault")])
        assert set(log.active) == {"press-1/tool1-wear"}  # nothing counts as emitted
        await ob.call(ob.sync.open)
        again = await log.commit([tr(TransitionKind.CLEARED)])
        assert again[0].seq == first[0].seq + 1  # no seq burnt by the failure
        assert log.active == {}


# -- the dropped-events notice -----------------------------------------------------------------


async def test_report_drops_commits_one_notice_with_the_next_seq(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path, max_events=100)) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        woken: list[int] = []
        log = await open_log(ob, on_commit=[lambda: woken.append(1)])
        assert await log.report_drops() is None and woken == []  # nothing dropped: nothing to say
        events = await log.commit([tr(rule=f"r{n}", time=T0 + n) for n in range(130)])  # 30 dropped
        await ob.call(ob.sync.settle, "up", events[49].seq)  # the link is back, room again
        notice = await log.report_drops()
        assert notice is not None and woken == [1, 1]
        assert notice.seq == events[-1].seq + 1 and notice.severity is Severity.CRITICAL  # dropped last
        body = json.loads(notice.body)
        assert set(body) == ATTRIBUTES
        assert body["specversion"] == "1.0" and body["id"] == notice.id
        assert body["type"] == "andon.outbox.dropped" and body["subject"] == "gw-1/outbox"
        assert body["source"] == "/andon/gw-1" and RFC3339_UTC.match(body["time"])
        data = body["data"]
        assert (data["dropped"], data["dropped_critical"]) == (30, 0)
        assert (data["first_seq"], data["last_seq"]) == (events[0].seq, events[29].seq)
        assert data["seq"] == notice.seq and data["gateway"] == "gw-1" and data["site"] == "plant-a"
        assert data["severity"] == "warning" and "dropped 30 event(s)" in data["message"]
        assert RFC3339_UTC.match(data["since"])
        assert await ob.call(ob.sync.drop_report) is None
        assert await log.report_drops() is None  # reported once
        (after,) = await log.commit([tr(rule="later")])
        assert after.seq == notice.seq + 1  # the notice took a seq like any other event
        pending = await ob.call(ob.sync.pending, "up", 1000)
        assert [e.seq for e in pending][-2:] == [notice.seq, after.seq]


# -- events that are not transitions: AlertLog.record ------------------------------------------


async def test_record_commits_a_non_transition_event_with_the_next_seq(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        woken: list[int] = []
        observed: list[str] = []
        log = await open_log(
            ob, on_commit=[lambda: woken.append(ob.sync.depth())], observers=[lambda t, e: observed.append(t.key)]
        )
        (first,) = await log.commit([tr()])
        data = {"alert": "press-1/tool1-wear", "by": "Ana", "seq": -1, "gateway": "forged", "value": float("inf")}
        event = await log.record("andon.alert.acknowledged", "press-1/tool1-wear", data, Severity.WARNING, at=T0 + 5)
        assert event.seq == first.seq + 1 and event.severity is Severity.WARNING
        assert woken == [1, 2] and observed == ["press-1/tool1-wear"]  # woken after it is on disk; no transition
        body = json.loads(event.body)
        assert set(body) == ATTRIBUTES and body["id"] == event.id and str(uuid.UUID(event.id)) == event.id
        assert body["type"] == "andon.alert.acknowledged" and body["subject"] == "press-1/tool1-wear"
        assert body["source"] == "/andon/gw-1" and body["time"] == "2023-11-14T22:13:25.123Z"
        assert body["data"] == {
            "alert": "press-1/tool1-wear",
            "by": "Ana",
            "value": None,  # JSON stays valid
            "seq": event.seq,  # the log's own fields win over the caller's
            "gateway": "gw-1",
            "site": "plant-a",
        }
        pending = await ob.call(ob.sync.pending, "s", 10)
        assert [(e.seq, e.id, e.body) for e in pending] == [(e.seq, e.id, e.body) for e in (first, event)]
        assert (event.type, event.subject, event.machine) == ("andon.alert.acknowledged", "press-1/tool1-wear", None)
        assert set(log.active) == {"press-1/tool1-wear"}  # alert state untouched
        now = await log.record("andon.test", "_gateway/test", {}, Severity.INFO)
        assert RFC3339_UTC.match(json.loads(now.body)["time"]) and now.seq == event.seq + 1
    async with AsyncOutbox(Outbox(db_path)) as ob:
        log = await open_log(ob)
        (after,) = await log.commit([tr(TransitionKind.CLEARED)])
        assert after.seq == now.seq + 1  # recorded events count in seq across a reopen


async def test_failed_record_commits_nothing_and_burns_no_seq(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        log = await open_log(ob)
        (first,) = await log.commit([tr()])
        await ob.call(ob.sync.close)
        with pytest.raises(OutboxError):
            await log.record("andon.test", "_gateway/test", {}, Severity.INFO)
        await ob.call(ob.sync.open)
        again = await log.record("andon.test", "_gateway/test", {}, Severity.INFO)
        assert again.seq == first.seq + 1


# -- acknowledgement -----------------------------------------------------------------------------


async def test_acknowledge_commits_the_event_and_marks_the_alert_across_a_restart(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        woken: list[int] = []
        log = await open_log(ob, on_commit=[lambda: woken.append(1)])
        (raised,) = await log.commit([tr(severity=Severity.CRITICAL, value=96.0, threshold=95.0)])
        assert not log.active["press-1/tool1-wear"].acknowledged
        assert await log.acknowledge("press-1/nope", "Ana", None) is None  # not active: nothing committed
        assert woken == [1] and await log.record("andon.test", "_gateway/test", {}, Severity.INFO)
        event = await log.acknowledge("press-1/tool1-wear", "Ana <ana@plant>", "changing it now", at=T0 + 30)
        assert event is not None and event.seq == raised.seq + 2 and event.severity is Severity.CRITICAL
        assert (event.type, event.subject, event.machine) == (
            "andon.alert.acknowledged",
            "press-1/tool1-wear",
            "press-1",
        )
        body = json.loads(event.body)
        assert set(body) == ATTRIBUTES and body["type"] == "andon.alert.acknowledged"
        assert body["subject"] == "press-1/tool1-wear" and body["time"] == "2023-11-14T22:13:50.123Z"
        assert body["data"] == {
            "alert": "press-1/tool1-wear",
            "machine": "press-1",
            "rule": "tool1-wear",
            "signal": "tool1_wear",
            "severity": "critical",
            "value": 96.0,
            "threshold": 95.0,
            "message": "press-1 tool1_wear 81.5 % over 80",
            "since": "2023-11-14T22:13:20.123Z",
            "by": "Ana <ana@plant>",
            "note": "changing it now",
            "seq": event.seq,
            "gateway": "gw-1",
            "site": "plant-a",
        }
        a = log.active["press-1/tool1-wear"]
        assert a.acknowledged and (a.ack_by, a.ack_at, a.ack_note) == ("Ana <ana@plant>", T0 + 30, "changing it now")
    async with AsyncOutbox(Outbox(db_path)) as ob:  # the acknowledgement is kept with the alert state
        log = await open_log(ob)
        assert log.active["press-1/tool1-wear"] == a
        await log.commit([tr(TransitionKind.UPDATED, severity=Severity.CRITICAL, message="still worn", time=T0 + 40)])
        kept = log.active["press-1/tool1-wear"]
        assert kept.acknowledged and kept.ack_by == "Ana <ana@plant>" and kept.message == "still worn"
        await log.commit([tr(TransitionKind.CLEARED, time=T0 + 50), tr(time=T0 + 60)])  # cleared, raised anew
        assert not log.active["press-1/tool1-wear"].acknowledged


async def test_an_escalation_must_be_acknowledged_again(outbox: AsyncOutbox) -> None:
    log = await open_log(outbox)
    await log.commit([tr(severity=Severity.WARNING)])
    assert await log.acknowledge("press-1/tool1-wear", "Ana", None) is not None
    await log.commit([tr(TransitionKind.UPDATED, severity=Severity.CRITICAL, time=T0 + 10)])
    assert not log.active["press-1/tool1-wear"].acknowledged
    assert log.active["press-1/tool1-wear"].since == T0  # still the same alert


async def test_acknowledging_a_three_part_alert_names_its_condition(outbox: AsyncOutbox) -> None:
    log = await open_log(outbox)
    await log.commit([tr(rule="alarms")])
    key = "press-1/alarms"
    log.active["press-1/alarms/Door.Open"] = dataclasses.replace(log.active.pop(key), key="press-1/alarms/Door.Open")
    event = await log.acknowledge("press-1/alarms/Door.Open", "Bo", None)
    assert event is not None
    data = json.loads(event.body)["data"]
    assert (data["alert"], data["machine"], data["rule"], data["condition"]) == (
        "press-1/alarms/Door.Open",
        "press-1",
        "alarms",
        "Door.Open",
    )


def test_alert_state_stored_before_acknowledgements_existed_still_loads() -> None:
    old = {"severity": "warning", "threshold": 80.0, "message": "worn", "since": T0}
    a = ActiveAlert.from_json("press-1/wear", old)
    assert (a.severity, a.signal, a.value, a.acknowledged) == (Severity.WARNING, None, None, False)
    assert ActiveAlert.from_json("press-1/wear", a.to_json()) == a


# -- a commit cancelled while the worker thread is inside append -------------------------------


@contextlib.contextmanager
def writer_held(ob: AsyncOutbox, db_path: Path) -> Iterator[tuple[threading.Event, Callable[[], None]]]:
    """Another connection holds the write lock, so the outbox's next transaction waits inside BEGIN.

    Yields (inside, release): ``inside`` is set once the worker thread has started that BEGIN (the
    real SQLite file's busy handler keeps it there); ``release`` lets it go on.
    """
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    inside = threading.Event()
    ob.sync.db.set_trace_callback(lambda sql: inside.set() if sql.startswith("BEGIN") else None)

    def release() -> None:
        blocker.execute("COMMIT")

    try:
        yield inside, release
    finally:
        ob.sync.db.set_trace_callback(None)
        if blocker.in_transaction:
            blocker.execute("COMMIT")
        blocker.close()


@pytest.mark.parametrize("cut", ["commit", "report_drops"])
async def test_cancelling_a_commit_inside_append_keeps_the_log_in_step_with_the_disk(db_path: Path, cut: str) -> None:
    async with AsyncOutbox(Outbox(db_path, max_events=4)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        seen: list[int] = []
        log = await open_log(ob, on_commit=[lambda: seen.append(-1)], observers=[lambda t, e: seen.append(e.seq)])
        before = await log.commit([tr(rule=f"r{n}") for n in range(6)])  # two dropped: a notice is due
        await ob.call(ob.sync.settle, "s", before[-1].seq)  # delivered: the file holds no event now
        seen.clear()
        with writer_held(ob, db_path) as (inside, release):
            work = log.commit([tr(rule="cut")]) if cut == "commit" else log.report_drops()
            task = asyncio.create_task(work)
            assert await asyncio.to_thread(inside.wait, 5)  # the worker thread is inside append
            task.cancel()  # a reload stops the machine (or a sink) right now
            await asyncio.sleep(0)
            release()
            with pytest.raises(asyncio.CancelledError):
                await task
        on_disk = await ob.call(ob.sync.pending, "s", 10)
        assert [e.seq for e in on_disk] == [before[-1].seq + 1]  # the cut job did commit
        assert seen == ([on_disk[0].seq] if cut == "commit" else []) + [-1]  # observed, and the sinks woken
        assert ("press-1/cut" in log.active) == (cut == "commit") == ("press-1/cut" in await ob.call(ob.sync.alerts))
        (after,) = await log.commit([tr(rule="after")])  # no UNIQUE failure, no seq reused below the cursor
        assert after.seq == before[-1].seq + 2
        assert [e.seq for e in await ob.call(ob.sync.pending, "s", 10)] == [after.seq - 1, after.seq]
