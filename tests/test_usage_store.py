"""The usage fold on a real SQLite outbox: committed with the transitions, never a summary twice,
history pruned, a failed commit changes nothing, and ``usage_report`` reads it (read-only, while a
writer has the file open)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import UsageSection
from agent.errors import OutboxError
from agent.model import Severity, Transition, TransitionKind
from agent.pipeline.alertlog import AlertLog
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.pipeline.usage import DAY, ToolChanged
from agent.pipeline.usagelog import TOOL_CHANGED, USAGE_SUMMARY, UsageLog, changed
from agent.pipeline.usagereport import combine, tool_changes, usage_report

T0 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
H = 3600.0
MACHINES = {"m1": {"punch": "strokes"}, "m2": {}}


def tr(change: TransitionKind, rule: str, t: float, machine: str = "m1", **extra: Any) -> Transition:
    return Transition(machine, rule, None, change, Severity.WARNING, 1, None, f"{rule} {change.value}", t, extra)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


async def open_log(ob: AsyncOutbox, now: float, **usage: Any) -> AlertLog:
    """An alert log with the usage fold, loaded from the file, watching MACHINES from ``now``."""
    log = AlertLog(ob, gateway="gw", site=None, usage=UsageLog(UsageSection(**usage), MACHINES))
    await log.load()
    assert log.usage is not None
    log.usage.configure(MACHINES)
    await log.commit_usage(lambda u: u.seen(now, list(log.active)))
    return log


@pytest.fixture
async def outbox(db_path: Path) -> AsyncIterator[AsyncOutbox]:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        yield ob


def bodies(ob: AsyncOutbox, type_: str) -> list[dict[str, Any]]:
    rows = ob.sync.db.execute("SELECT body FROM events ORDER BY seq").fetchall()
    return [b for b in (json.loads(r[0]) for r in rows) if b["type"] == type_]


async def test_usage_events_commit_with_the_transitions_and_the_state(outbox: AsyncOutbox) -> None:
    log = await open_log(outbox, T0 + H)
    change = ToolChanged(T0 + 3 * H, "punch", "punch 3", 800.0, 1000.0)
    events = await log.commit([tr(TransitionKind.CLEARED, "punch", T0 + 3 * H)], tools=[("m1", change)])
    assert [e.type for e in events] == ["andon.alert.cleared", TOOL_CHANGED]  # the alert's event, then the tool change
    (tool,) = bodies(outbox, TOOL_CHANGED)
    assert tool["subject"] == "m1/punch"
    assert tool["data"]["life_fraction"] == 0.8 and tool["data"]["signal"] == "strokes"
    assert tool["data"]["in_service_seconds"] == 2 * H  # since first seen (the agent started at 01:00)
    assert tool["data"]["seq"] == events[1].seq and tool["data"]["gateway"] == "gw"
    assert "punch 3 on m1 was changed at 80% of its life (800 of 1000)" in tool["data"]["message"]
    stored = outbox.sync.db.execute("SELECT data FROM usage_tool_changes").fetchall()
    assert [json.loads(r[0]) for r in stored] == [
        {k: v for k, v in tool["data"].items() if k not in ("seq", "gateway", "site")}
    ]


async def test_a_summary_is_committed_once_with_the_state_that_closes_its_period(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        log = await open_log(ob, T0 + H)
        await log.commit([tr(TransitionKind.RAISED, "offline", T0 + 2 * H)])
        await log.commit([tr(TransitionKind.CLEARED, "offline", T0 + 3 * H)])
        await log.commit_usage(lambda u: u.seen(T0 + DAY + 1))  # the clock, just after midnight
        await log.commit_usage(lambda u: u.seen(T0 + DAY + 2))  # again: nothing more
        (summary,) = [s for s in bodies(ob, USAGE_SUMMARY) if s["subject"] == "m1"]
        assert summary["time"] == "2024-05-02T00:00:00.000Z"
        data = summary["data"]
        assert (data["online_seconds"], data["offline_seconds"], data["unobserved_seconds"]) == (22 * H, H, H)
        assert data["alerts"] == {"offline": {"raised": 1, "active_seconds": H}}
    # A restart: the state says the period is done, so the same clock time gives no summary again.
    async with AsyncOutbox(Outbox(db_path)) as ob:
        log = await open_log(ob, T0 + DAY + 3)
        await log.commit_usage(lambda u: u.seen(T0 + DAY + 4))
        assert [s["data"]["period_start"] for s in bodies(ob, USAGE_SUMMARY) if s["subject"] == "m1"] == [
            "2024-05-01T00:00:00.000Z"
        ]
        periods = ob.sync.db.execute("SELECT machine, period_start FROM usage_periods ORDER BY machine").fetchall()
        assert periods == [("m1", T0), ("m2", T0)]


async def test_counts_survive_a_restart(db_path: Path) -> None:
    async with AsyncOutbox(Outbox(db_path)) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        log = await open_log(ob, T0)
        await log.commit([tr(TransitionKind.RAISED, "code", T0 + H, kind="code", code=12, code_text="Overload")])
        await log.commit_usage(lambda u: u.seen(T0 + 2 * H))  # the last clock mark before the agent stops
    async with AsyncOutbox(Outbox(db_path)) as ob:
        log = await open_log(ob, T0 + 4 * H)  # two hours down; the code is still active
        await log.commit([tr(TransitionKind.CLEARED, "code", T0 + 5 * H, kind="code", code=0)])
        await log.commit_usage(lambda u: u.seen(T0 + DAY))
        (summary,) = [s["data"] for s in bodies(ob, USAGE_SUMMARY) if s["subject"] == "m1"]
    assert summary["codes"] == {
        "code/12": {"rule": "code", "code": 12, "count": 1, "active_seconds": 2 * H, "text": "Overload"}
    }
    assert (summary["online_seconds"], summary["unobserved_seconds"]) == (22 * H, 2 * H)


async def test_send_false_collects_for_the_report_and_sends_nothing(outbox: AsyncOutbox, db_path: Path) -> None:
    log = await open_log(outbox, T0, send=False)
    change = ToolChanged(T0 + H, "punch", "punch 3", 500.0, 1000.0)
    events = await log.commit([tr(TransitionKind.RAISED, "punch", T0 + H)], tools=[("m1", change)])
    await log.commit_usage(lambda u: u.seen(T0 + DAY))
    assert len(events) == 1 and bodies(outbox, TOOL_CHANGED) == bodies(outbox, USAGE_SUMMARY) == []
    report = usage_report(db_path, T0)
    assert report["m1"]["tool_changes"] == {
        "punch": {"tool": "punch 3", "count": 1, "mean_life_fraction": 0.5, "min_life_fraction": 0.5}
    }


async def test_a_failed_commit_leaves_the_fold_as_it_was(outbox: AsyncOutbox) -> None:
    log = await open_log(outbox, T0)
    assert log.usage is not None
    before = dict(log.usage.states)
    await outbox.call(outbox.sync.close)  # the disk goes away
    with pytest.raises(OutboxError):
        await log.commit([tr(TransitionKind.RAISED, "wear", T0 + H)])
    with pytest.raises(OutboxError):
        await log.commit_usage(lambda u: u.seen(T0 + DAY))
    assert log.usage.states == before
    await outbox.call(outbox.sync.open)
    await log.commit([tr(TransitionKind.RAISED, "wear", T0 + H)])  # the runner tries it again
    await log.commit_usage(lambda u: u.seen(T0 + DAY))
    (summary,) = [s["data"] for s in bodies(outbox, USAGE_SUMMARY) if s["subject"] == "m1"]
    assert summary["alerts"] == {"wear": {"raised": 1, "active_seconds": 23 * H}}


async def test_history_is_pruned_to_keep(outbox: AsyncOutbox) -> None:
    log = await open_log(outbox, T0, keep="3d")
    for day in range(1, 7):
        await log.commit([tr(TransitionKind.RAISED, "wear", T0 + day * DAY - H)])
        await log.commit(
            [tr(TransitionKind.CLEARED, "wear", T0 + day * DAY - H / 2)],
            tools=[("m1", ToolChanged(T0 + day * DAY - 10, "punch", "p", 1.0, 2.0))],
        )
        await log.commit_usage(lambda u, day=day: u.seen(T0 + day * DAY))  # type: ignore[misc]
    starts = [r[0] for r in outbox.sync.db.execute("SELECT period_start FROM usage_periods WHERE machine = 'm1'")]
    assert starts == [T0 + 3 * DAY, T0 + 4 * DAY, T0 + 5 * DAY]
    times = [r[0] for r in outbox.sync.db.execute("SELECT time FROM usage_tool_changes ORDER BY time")]
    assert times == [T0 + d * DAY - 10 for d in (4, 5, 6)]


async def test_usage_report_reads_while_the_agent_has_the_file_open(outbox: AsyncOutbox, db_path: Path) -> None:
    log = await open_log(outbox, T0)
    for day in range(3):
        base = T0 + day * DAY
        await log.commit([tr(TransitionKind.RAISED, "code", base + H, kind="code", code=12, code_text="Overload")])
        await log.commit([tr(TransitionKind.UPDATED, "code", base + 2 * H, kind="code", code=31, code_text="Coolant")])
        await log.commit([tr(TransitionKind.CLEARED, "code", base + 3 * H, kind="code", code=0)])
        await log.commit([], tools=[("m1", ToolChanged(base + 4 * H, "punch", "punch 3", 600.0 + 100 * day, 1000.0))])
        await log.commit_usage(lambda u, base=base: u.seen(base + DAY))  # type: ignore[misc]
    await log.commit([tr(TransitionKind.RAISED, "code", T0 + 3 * DAY + H, kind="code", code=31, code_text="Coolant")])
    await log.commit_usage(lambda u: u.seen(T0 + 3 * DAY + 2 * H))  # the period under way, up to 02:00
    report = usage_report(db_path, T0 + DAY + 1)  # from the second day on
    m1 = report["m1"]
    assert (m1["period_start"], m1["period_end"]) == ("2024-05-02T00:00:00.000Z", "2024-05-04T02:00:00.000Z")
    assert (m1["online_seconds"], m1["offline_seconds"], m1["unobserved_seconds"]) == (50 * H, 0.0, 0.0)
    assert list(m1["codes"]) == ["code/31", "code/12"]  # most frequent first
    assert m1["codes"]["code/31"] == {
        "rule": "code",
        "code": 31,
        "count": 3,
        "active_seconds": 3 * H,
        "text": "Coolant",
    }
    assert m1["alerts"] == {"code": {"raised": 3, "active_seconds": 5 * H}}
    assert m1["tool_changes"] == {
        "punch": {"tool": "punch 3", "count": 2, "mean_life_fraction": 0.75, "min_life_fraction": 0.7}
    }
    assert set(report) == {"m1", "m2"}
    # The report is read-only: the file is as it was, and the writer goes on.
    await log.commit([tr(TransitionKind.CLEARED, "code", T0 + 3 * DAY + 3 * H, kind="code", code=0)])


def test_usage_report_of_a_file_without_usage_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("CREATE TABLE events (seq INTEGER PRIMARY KEY)").connection.commit()
    assert usage_report(path, 0) == {}
    with pytest.raises(FileNotFoundError, match="no outbox at"):
        usage_report(tmp_path / "missing.db", 0)


def test_combine_adds_up_periods() -> None:
    a = {
        "period_start": "2024-05-01T00:00:00.000Z",
        "period_end": "2024-05-02T00:00:00.000Z",
        "online_seconds": 80000.0,
        "offline_seconds": 6000.0,
        "unobserved_seconds": 400.0,
        "alerts": {"offline": {"raised": 1, "active_seconds": 6000.0}},
        "codes": {"c/1": {"rule": "c", "code": 1, "count": 1, "active_seconds": 5.5, "text": "one"}},
    }
    b = a | {
        "period_start": "2024-05-02T00:00:00.000Z",
        "period_end": "2024-05-03T00:00:00.000Z",
        "codes": {"c/2": {"rule": "c", "code": 2, "count": 2, "active_seconds": 1.0, "text": "two"}},
    }
    out = combine("m", [a, b], [])
    assert out["online_seconds"] == 160000.0 and out["offline_seconds"] == 12000.0
    assert out["alerts"] == {"offline": {"raised": 2, "active_seconds": 12000.0}}
    assert list(out["codes"]) == ["c/2", "c/1"]
    assert (out["period_start"], out["period_end"]) == ("2024-05-01T00:00:00.000Z", "2024-05-03T00:00:00.000Z")
    assert out["tool_changes"] == {}


def test_tool_changes_without_a_known_life() -> None:
    changes: list[dict[str, Any]] = [
        {"rule": "r", "tool": "t", "life_fraction": None},
        {"rule": "r", "tool": "t", "life_fraction": 0.9},
    ]
    assert tool_changes(changes) == {
        "r": {"tool": "t", "count": 2, "mean_life_fraction": 0.9, "min_life_fraction": 0.9}
    }
    assert tool_changes(changes[:1])["r"]["mean_life_fraction"] is None


@pytest.mark.parametrize(
    ("t", "code", "text"),
    [
        (tr(TransitionKind.RAISED, "fc", T0, kind="code", code=12, code_text="Overload"), 12, "Overload"),
        (tr(TransitionKind.UPDATED, "fc", T0, kind="code", code=31, code_text="Coolant"), 31, "Coolant"),
        (tr(TransitionKind.CLEARED, "fc", T0, kind="code", code=0, code_text="no fault"), None, ""),
        (tr(TransitionKind.RAISED, "wear", T0, kind="threshold"), None, ""),
        # an OPC UA condition: its key's third part is the code, the alarm's message its text
        (
            Transition(
                "m1",
                "alarms",
                None,
                TransitionKind.RAISED,
                Severity.CRITICAL,
                800,
                None,
                "Spindle hot",
                T0,
                {"kind": "alarms", "condition": "Hot"},
                part="Spindle.Hot",
            ),
            "Spindle.Hot",
            "Spindle hot",
        ),
    ],
)
def test_a_transition_as_the_fold_sees_it(t: Transition, code: object, text: str) -> None:
    obs = changed(t)
    assert (obs.key, obs.kind, obs.time, obs.code, obs.text) == (t.key, t.kind, t.time, code, text)
