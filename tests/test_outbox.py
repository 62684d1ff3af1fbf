"""The durable outbox against a real SQLite file: order, settling, sinks, bound, damage, and SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.model import Severity, StoredEvent
from agent.pipeline.outbox import AsyncOutbox, Outbox

ROOT = Path(__file__).resolve().parent.parent
W, C, INFO = Severity.WARNING, Severity.CRITICAL, Severity.INFO


def ev(seq: int, severity: Severity = Severity.WARNING) -> StoredEvent:
    return StoredEvent(seq, f"id-{seq}", severity, json.dumps({"id": f"id-{seq}", "seq": seq}).encode())


def seqs(events: list[StoredEvent]) -> list[int]:
    return [e.seq for e in events]


def all_seqs(outbox: Outbox) -> list[int]:
    return [row[0] for row in outbox.db.execute("SELECT seq FROM events ORDER BY seq")]


def damaged(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["s"])
    yield ob
    ob.close()


# -- order and settling ------------------------------------------------------------------------


def test_new_file_is_wal_and_starts_seq_at_wall_clock_ms(path: Path) -> None:
    before = int(time.time() * 1000)
    ob = Outbox(path)
    ob.open()
    try:
        assert before <= ob.last_seq() <= int(time.time() * 1000)
        assert ob.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert ob.stats().events == 0 and ob.stats().oldest_seq is None
    finally:
        ob.close()
    with pytest.raises(OutboxError, match="not open"):
        ob.last_seq()


def test_append_and_pending_in_seq_order(outbox: Outbox) -> None:
    outbox.append([ev(1), ev(2), ev(3)], {})
    outbox.append([ev(4, C), ev(5)], {})
    got = outbox.pending("s", 10)
    assert seqs(got) == [1, 2, 3, 4, 5]
    sent = ev(4, C)
    assert (got[3].seq, got[3].id, got[3].severity, got[3].body) == (sent.seq, sent.id, sent.severity, sent.body)
    assert seqs(outbox.pending("s", 2)) == [1, 2]
    assert outbox.last_seq() == 5
    assert outbox.depth() == 5 and outbox.depth("s") == 5
    assert outbox.stats().oldest_seq == 1
    assert outbox.pending("unknown-sink", 10) == []


def test_append_commits_alert_state_with_events(outbox: Outbox) -> None:
    outbox.append([ev(1)], {"m/a": {"severity": "warning"}, "m/b": {"severity": "critical"}})
    outbox.append([ev(2)], {"m/a": None, "m/b": {"severity": "info"}})
    assert outbox.alerts() == {"m/b": {"severity": "info"}}


def test_failed_append_rolls_back_everything(outbox: Outbox) -> None:
    outbox.append([ev(1)], {})
    with pytest.raises(OutboxError):
        outbox.append([ev(2), ev(1)], {"m/a": {"x": 1}})  # seq 1 again: the whole batch is refused
    assert all_seqs(outbox) == [1]
    assert outbox.alerts() == {}
    assert outbox.last_seq() == 1
    assert outbox.depth() == 1


def test_settle_deletes_and_dead_letters(outbox: Outbox) -> None:
    outbox.append([ev(s) for s in range(1, 6)], {})
    outbox.settle("s", 3, [(ev(2), "HTTP 400")])
    assert seqs(outbox.pending("s", 10)) == [4, 5]
    assert all_seqs(outbox) == [4, 5]
    stats = outbox.stats()
    assert (stats.events, stats.dead_letters, stats.oldest_seq) == (2, 1, 4)
    row = outbox.db.execute("SELECT sink, seq, id, body, reason FROM dead_letters").fetchone()
    assert row == ("s", 2, "id-2", ev(2).body, "HTTP 400")
    outbox.settle("s", 2)  # a cursor never moves back
    assert seqs(outbox.pending("s", 10)) == [4, 5]
    outbox.settle("s", 5)
    assert outbox.pending("s", 10) == [] and outbox.depth() == 0 and outbox.depth("s") == 0
    assert outbox.stats().dead_letters == 1  # dead letters are kept


def test_two_sinks_each_see_every_event_and_delete_needs_both(outbox: Outbox) -> None:
    outbox.set_sinks(["a", "b"])
    outbox.append([ev(s) for s in range(1, 6)], {})
    assert seqs(outbox.pending("a", 10)) == seqs(outbox.pending("b", 10)) == [1, 2, 3, 4, 5]
    outbox.settle("a", 5)
    assert outbox.pending("a", 10) == []
    assert seqs(outbox.pending("b", 10)) == [1, 2, 3, 4, 5]
    assert all_seqs(outbox) == [1, 2, 3, 4, 5] and outbox.depth() == 5
    outbox.settle("b", 3)
    assert all_seqs(outbox) == [4, 5] and outbox.depth() == 2
    assert outbox.depth("a") == 0 and outbox.depth("b") == 2
    outbox.settle("b", 5)
    assert all_seqs(outbox) == [] and outbox.depth() == 0


def test_set_sinks_forgets_a_removed_sink(outbox: Outbox) -> None:
    outbox.set_sinks(["a", "b"])
    outbox.append([ev(1), ev(2), ev(3)], {})
    outbox.settle("a", 3)
    assert outbox.depth() == 3  # "b" still holds them
    outbox.set_sinks(["a"])
    assert all_seqs(outbox) == [] and outbox.depth() == 0
    assert [r[0] for r in outbox.db.execute("SELECT sink FROM cursors")] == ["a"]
    assert outbox.pending("b", 10) == []
    outbox.set_sinks(["a", "b"])  # a sink added later sees what is still there, from the start
    outbox.append([ev(4)], {})
    assert seqs(outbox.pending("b", 10)) == [4]


# -- the bound ---------------------------------------------------------------------------------


def test_full_outbox_drops_oldest_non_critical_first(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(path, max_events=5)
    ob.open()
    ob.set_sinks(["s"])
    try:
        with caplog.at_level(logging.ERROR, logger="andon.outbox"):
            ob.append([ev(1, C), ev(2, W), ev(3, C), ev(4, INFO), ev(5, W)], {})
            assert ob.stats().dropped == 0
            ob.append([ev(6, W), ev(7, W), ev(8, C)], {})
            assert all_seqs(ob) == [1, 3, 6, 7, 8]  # 2, 4 and 5 went; the critical 1 and 3 stayed
            assert ob.depth() == 5 and ob.stats().events == 5 and ob.stats().dropped == 3
            ob.append([ev(9, C), ev(10, C)], {})
            assert all_seqs(ob) == [1, 3, 8, 9, 10]
            ob.append([ev(11, C)], {})  # only critical ones left: the oldest critical goes
            assert all_seqs(ob) == [3, 8, 9, 10, 11]
            assert ob.stats().dropped == 6 and ob.depth() == 5
        full = [r for r in caplog.records if "full" in r.getMessage()]
        assert len(full) == 1  # said once, not once per event
        assert seqs(ob.pending("s", 10)) == [3, 8, 9, 10, 11]
    finally:
        ob.close()
    ob = Outbox(path, max_events=5)
    ob.open()
    try:
        assert ob.depth() == 5 and ob.stats().dropped == 6  # the count and the tally survive a reopen
    finally:
        ob.close()


def test_full_outbox_never_grows_past_its_bound(path: Path) -> None:
    rng = random.Random(7)
    ob = Outbox(path, max_events=20)
    ob.open()
    ob.set_sinks(["s"])
    try:
        seq = 0
        for _ in range(30):
            batch = [ev(seq + i + 1, Severity(rng.randint(1, 3))) for i in range(rng.randint(1, 6))]
            seq += len(batch)
            ob.append(batch, {})
            assert ob.depth() == len(all_seqs(ob)) <= 20
        assert ob.stats().dropped == seq - 20
    finally:
        ob.close()


# -- damaged files -----------------------------------------------------------------------------


def _check_fresh(path: Path) -> None:
    ob = Outbox(path)
    ob.open()
    try:
        assert ob.depth() == 0 and ob.alerts() == {}
        ob.set_sinks(["s"])
        ob.append([ev(ob.last_seq() + 1)], {"m/r": {"severity": "warning"}})
        assert len(ob.pending("s", 10)) == 1
    finally:
        ob.close()


def test_garbage_file_is_set_aside(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    garbage = random.Random(1).randbytes(20_000)
    path.write_bytes(garbage)
    _check_fresh(path)
    aside = damaged(path)
    assert len(aside) == 1
    assert aside[0].read_bytes() == garbage  # kept as it was, for a post-mortem
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_setting_a_damaged_file_aside_syncs_its_directory(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename must be on disk before the fresh outbox takes the name: power lost right after it
    must not bring the damaged file back as ``outbox.db`` (or lose the one kept for a post-mortem)."""
    path.parent.mkdir(parents=True)
    path.write_bytes(random.Random(2).randbytes(8192))
    real_fsync, synced = os.fsync, []

    def fsync(fd: int) -> None:  # the real fsync, watched: which directory, and was the file renamed by then
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if target.is_dir():
            synced.append((target, bool(damaged(path)), path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ob = Outbox(path)
    ob.open()
    ob.close()
    assert len(damaged(path)) == 1
    assert (path.parent, True, False) in synced  # after the rename, before the new file was made


def test_truncated_file_is_set_aside(path: Path) -> None:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["s"])
    for base in range(0, 400, 50):
        ob.append([StoredEvent(base + i + 1, f"id-{base + i}", W, b"x" * 400) for i in range(50)], {})
    ob.close()
    size = path.stat().st_size
    assert size > 100_000
    with path.open("r+b") as f:
        f.truncate(size // 2)
    _check_fresh(path)
    aside = damaged(path)
    assert len(aside) == 1 and aside[0].stat().st_size == size // 2


def test_unopenable_file_is_an_error_not_damage(path: Path) -> None:
    # An OperationalError (locked by another process, unreadable, I/O error, here: a directory in the
    # way) says nothing about the file's contents: it must not be set aside and replaced.
    path.mkdir(parents=True)
    (path / "keep").write_text("x")
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(path).open()
    assert damaged(path) == []
    assert (path / "keep").read_text() == "x"


# -- seq across restarts -----------------------------------------------------------------------


def test_last_seq_survives_reopen_after_everything_was_delivered(path: Path) -> None:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["s"])
    first = ob.last_seq() + 1
    ob.append([ev(first), ev(first + 1)], {})
    ob.settle("s", first + 1)
    assert ob.depth() == 0 and all_seqs(ob) == []
    ob.close()

    ob = Outbox(path)
    ob.open()
    try:
        assert ob.last_seq() == first + 1
        ob.append([ev(first + 2)], {})
        assert ob.last_seq() == first + 2
        assert seqs(ob.pending("s", 10)) == [first + 2]
    finally:
        ob.close()


async def test_async_outbox_runs_on_its_worker_thread(path: Path) -> None:
    async with AsyncOutbox(Outbox(path)) as ob:
        await ob.call(ob.sync.set_sinks, ["s"])
        await ob.call(ob.sync.append, [ev(1), ev(2)], {})
        assert seqs(await ob.call(ob.sync.pending, "s", 10)) == [1, 2]
    with pytest.raises(OutboxError):
        ob.sync.depth("s")  # closed on exit


# -- SIGKILL in the middle of writing ----------------------------------------------------------


def _run_writer(path: Path, seed: int, lines: int) -> tuple[int, list[int]]:
    """Start the writer, SIGKILL it once it has printed ``lines`` committed seqs; return (start, printed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_writer", str(path), str(seed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    printed: list[int] = []
    try:
        head = proc.stdout.readline().decode()
        assert head.startswith("start "), proc.stderr.read().decode()
        start = int(head.split()[1])
        while len(printed) < lines:
            line = proc.stdout.readline()
            assert line, f"writer died: {proc.stderr.read().decode()}"
            printed.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return start, printed


@pytest.mark.parametrize(("seed", "lines"), [(1, 1), (2, 9), (3, 40), (4, 120), (5, 300)])
def test_sigkill_mid_write_loses_no_committed_event(path: Path, seed: int, lines: int) -> None:
    path.parent.mkdir(parents=True)
    printed: list[int] = []
    first: int | None = None
    for round_ in range(2):  # killed, restarted on the same file, killed again
        start, got = _run_writer(path, seed * 10 + round_, lines)
        if first is None:
            first = start + 1
        else:
            assert start >= printed[-1]  # seq keeps increasing after the crash
        printed += got
    assert first is not None

    assert damaged(path) == []
    ob = Outbox(path, max_events=10**9)
    ob.open()
    try:
        assert ob.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert damaged(path) == []
        stored = ob.pending("s", 10**6)
        got = seqs(stored)
        assert set(printed) <= set(got)  # every event the writer saw committed is there
        # No holes: each run appends contiguous seqs from the file's last_seq. The writer may have
        # committed more than the test read before the kill landed; those are there too.
        assert got == list(range(first, got[-1] + 1))
        assert printed == sorted(set(printed)) and printed[0] == first
        assert got[-1] >= printed[-1]
        for e in stored:
            body = json.loads(e.body)
            assert body["id"] == e.id == f"e{e.seq}" and body["data"]["seq"] == e.seq
        # events and alert state were committed together
        assert ob.alerts()["last"]["seq"] == got[-1] == ob.last_seq()
        assert ob.depth() == len(got)
    finally:
        ob.close()


# -- the byte bound, the drop tally and the report -----------------------------------------------


def big(seq: int, severity: Severity = W, size: int = 1000) -> StoredEvent:
    return StoredEvent(seq, f"id-{seq}", severity, b"x" * size)


def test_byte_bound_drops_oldest_non_critical_first(path: Path) -> None:
    ob = Outbox(path, max_events=1000, max_bytes=5000)
    ob.open()
    ob.set_sinks(["s"])
    try:
        ob.append([big(1, C), big(2), big(3), big(4, C)], {})
        assert ob.stats().bytes == 4000 and ob.drop_report() is None
        ob.append([big(5), big(6, INFO, 2000)], {})  # 7000 bytes: 2 and 3 go
        assert all_seqs(ob) == [1, 4, 5, 6]
        assert ob.stats().bytes == 5000 == sum(len(e.body) for e in ob.pending("s", 10))
        report = ob.drop_report()
        assert report is not None
        assert (report.count, report.first_seq, report.last_seq, report.critical) == (2, 2, 3, 0)
        assert time.time() - 5 < report.since <= time.time()
        ob.append([big(7, C, 3000)], {})  # 8000: 5 and 6 go (non-critical), the critical stay
        assert all_seqs(ob) == [1, 4, 7]
        ob.append([big(8, C, 1000)], {})  # only critical ones left: the oldest critical goes
        assert all_seqs(ob) == [4, 7, 8]
        report = ob.drop_report()
        assert report is not None and (report.count, report.first_seq, report.last_seq, report.critical) == (
            5,
            1,
            6,
            1,
        )
        stats = ob.stats()
        assert (stats.events, stats.bytes, stats.dropped, stats.dropped_unreported) == (3, 5000, 5, 5)
    finally:
        ob.close()


def test_reporting_drops_is_committed_with_the_notice_and_survives_reopen(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = Outbox(path, max_events=100)
    ob.open()
    ob.set_sinks(["s"])
    with caplog.at_level(logging.ERROR, logger="andon.outbox"):
        ob.append([ev(s) for s in range(1, 131)], {})  # 30 dropped
        ob.append([ev(131)], {})  # one more: not logged again
    assert sum("full" in r.getMessage() for r in caplog.records) == 1
    report = ob.drop_report()
    assert report is not None and (report.count, report.first_seq, report.last_seq) == (31, 1, 31)
    ob.close()

    ob = Outbox(path, max_events=100)
    ob.open()  # the unreported drops survive a restart
    try:
        assert ob.unreported_drops == 31 and ob.stats().dropped == 31
        ob.settle("s", 40)  # the link is back: some room again
        ob.append([ev(132, C)], {}, 31)  # the notice: the drops are reported in the same transaction
        assert ob.drop_report() is None and ob.unreported_drops == 0 and ob.stats().dropped == 31
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="andon.outbox"):
            ob.append([ev(s) for s in range(133, 153)], {})  # full again: a new episode is logged again
        assert ob.drop_report() is not None
        assert sum("full" in r.getMessage() for r in caplog.records) == 1  # a new episode is logged again
    finally:
        ob.close()


def test_dead_letters_are_never_deleted_and_the_room_left_is_read_from_the_file(path: Path) -> None:
    ob = Outbox(path, max_dead_letters=3)
    ob.open()
    ob.set_sinks(["s"])
    try:
        ob.append([ev(s) for s in range(1, 9)], {})
        assert ob.dead_letter_room() == 3
        ob.settle("s", 4, [(ev(1), "HTTP 400"), (ev(2), "HTTP 400")])
        assert ob.dead_letter_room() == 1
        ob.settle("s", 8, [(ev(5), "HTTP 422"), (ev(6), "HTTP 422")])  # past the limit: kept all the same
        assert [r[0] for r in ob.db.execute("SELECT seq FROM dead_letters ORDER BY seq")] == [1, 2, 5, 6]
        assert ob.dead_letter_room() == 0 and ob.stats().dead_letters == 4
        other = sqlite3.connect(path)  # `andon-agent outbox purge` in another process
        with other:
            other.execute("DELETE FROM dead_letters WHERE seq <= 2")
        other.close()
        assert ob.dead_letter_room() == 1 and ob.stats().dead_letters == 2
    finally:
        ob.close()


def test_stats_are_read_from_memory_and_match_the_file(path: Path) -> None:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["a", "b"])
    try:
        ob.append([ev(s) for s in range(1, 6)], {})
        ob.settle("a", 5)
        ob.settle("b", 2, [(ev(2), "HTTP 400")])
        stats = ob.stats()
        size = ob.db.execute("SELECT sum(length(body)) FROM events").fetchone()[0]
        assert (stats.events, stats.bytes, stats.oldest_seq, stats.dead_letters) == (3, size, 3, 1)
        assert not stats.disk_full and stats.write_errors == 0 and stats.file_bytes > 0
    finally:
        ob.close()


# -- the file does not grow without bound --------------------------------------------------------


def test_new_file_uses_incremental_auto_vacuum_and_gives_space_back_after_a_drain(path: Path) -> None:
    ob = Outbox(path, max_bytes=2**30)
    ob.open()
    ob.set_sinks(["s"])
    try:
        assert ob.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert ob.db.execute("PRAGMA journal_size_limit").fetchone()[0] == 4 * 1024 * 1024
        seq = ob.last_seq()
        for _ in range(40):  # a backlog of about 8 MB
            ob.append([big(seq + i + 1, W, 2000) for i in range(100)], {})
            seq += 100
        pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
        ob.settle("s", seq)  # drained
        assert ob.depth() == 0
        assert ob.db.execute("PRAGMA page_count").fetchone()[0] < pages // 4  # free pages went back
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size <= 4 * 1024 * 1024
    finally:
        ob.close()


def test_fill_and_drain_cycles_reuse_the_same_space(path: Path) -> None:
    ob = Outbox(path, max_bytes=2**30)
    ob.open()
    ob.set_sinks(["s"])
    try:
        seq = ob.last_seq()
        sizes = []
        for _ in range(6):
            for _ in range(10):
                ob.append([big(seq + i + 1, W, 1500) for i in range(50)], {})
                seq += 50
            ob.checkpoint()
            sizes.append(path.stat().st_size)
            ob.settle("s", seq - 25)  # most of it goes; a few stay (no vacuum: the free pages are reused)
        assert max(sizes[1:]) <= sizes[0] * 1.1  # the file stays at its high-water mark
    finally:
        ob.close()


# -- a full disk -------------------------------------------------------------------------------


def test_full_disk_refuses_writes_logs_once_and_resumes(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["s"])
    try:
        ob.append([ev(1)], {"m/a": {"n": 1}})
        pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
        ob.db.execute(f"PRAGMA max_page_count={pages}")  # what a full disk looks like to SQLite (SQLITE_FULL)
        with caplog.at_level(logging.INFO, logger="andon.outbox"):
            for _ in range(3):
                with pytest.raises(OutboxError, match="disk full"):
                    ob.append([big(2, W, 20_000)], {"m/a": {"n": 2}})
                assert ob.stats().disk_full
            assert all_seqs(ob) == [1] and ob.alerts() == {"m/a": {"n": 1}}  # nothing half-written
            assert ob.last_seq() == 1 and ob.stats().write_errors == 3 and ob.depth() == 1
            ob.settle("s", 1)  # delivery goes on (deleting needs no new page)
            ob.db.execute("PRAGMA max_page_count=1073741823")  # space again
            ob.append([big(2, W, 20_000)], {"m/a": {"n": 2}})
        assert all_seqs(ob) == [2] and ob.alerts() == {"m/a": {"n": 2}} and not ob.stats().disk_full
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "disk is full" in errors[0].getMessage()
        assert any("writing again" in r.getMessage() for r in caplog.records)
    finally:
        ob.close()


# -- damage in the WAL -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_wal_never_stops_the_start(path: Path, damage: str) -> None:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["s"])
    ob.append([ev(1), ev(2)], {})
    ob.checkpoint()  # 1 and 2 are in the main file
    ob.append([ev(3)], {})  # 3 only in the WAL
    wal = Path(f"{path}-wal")
    saved = wal.read_bytes()
    db_copy = path.read_bytes()
    ob._db = None  # leave the WAL as a crash would (no checkpoint on close)
    path.with_name("copy.db").write_bytes(db_copy)
    copy_wal = path.with_name("copy.db-wal")
    if damage == "garbage":
        copy_wal.write_bytes(random.Random(5).randbytes(len(saved)))
    else:
        copy_wal.write_bytes(saved[: len(saved) // 2])
    again = Outbox(path.with_name("copy.db"))
    again.open()
    try:
        got = seqs(again.pending("s", 10))
        assert got[:2] == [1, 2]  # what reached the main file is intact; the WAL tail is as far as it is valid
        assert again.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert damaged(path.with_name("copy.db")) == []
        again.append([ev(4)], {})
    finally:
        again.close()


def test_damage_found_while_running_sets_the_file_aside_and_goes_on(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["s"])
    try:
        first = ob.last_seq() + 1
        ob.append([big(first + i, W, 3000) for i in range(40)], {"m/a": {"n": 1}})
        ob.checkpoint()
        with path.open("r+b") as f:  # a bad SD card sector in the middle of the file
            f.seek(4096 * 3)
            f.write(random.Random(9).randbytes(4096 * 8))
        ob._db.close()  # type: ignore[union-attr]  # as if SQLite read the pages again
        ob._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        with pytest.raises(OutboxError):
            ob.pending("s", 100)
        assert len([p for p in damaged(path) if not p.name.endswith(("-wal", "-shm"))]) == 1
        assert any("DAMAGED while running" in r.getMessage() for r in caplog.records)
        ob.append([ev(first + 100)], {})  # a fresh file: writing goes on
        assert seqs(ob.pending("s", 10)) == [first + 100] and ob.stats().events == 1
    finally:
        ob.close()


@pytest.mark.parametrize("seed", range(5))
def test_drops_match_a_plain_model_of_the_rule(path: Path, seed: int) -> None:
    """Random severities, sizes, batches and settles against a list that applies the rule by hand."""
    rng = random.Random(seed)
    ob = Outbox(path, max_events=120, max_bytes=60_000)
    ob.open()
    ob.set_sinks(["s"])
    model: list[StoredEvent] = []
    try:
        seq = 0
        for _ in range(150):
            batch = [
                big(seq + i + 1, Severity(rng.choice([1, 2, 3, 3, 3])), rng.randint(10, 900))
                for i in range(rng.randint(1, 12))
            ]
            seq += len(batch)
            ob.append(batch, {})
            model += batch
            for critical in (False, True):  # the rule: the oldest non-critical first, then the oldest
                while len(model) > 120 or sum(len(e.body) for e in model) > 60_000:
                    victim = next((e for e in model if (e.severity is C) == critical), None)
                    if victim is None:
                        break
                    model.remove(victim)
            assert all_seqs(ob) == [e.seq for e in model]
            if rng.random() < 0.1 and model:  # the upstream takes some now and then
                upto = model[rng.randrange(len(model))].seq
                ob.settle("s", upto)
                model = [e for e in model if e.seq > upto]
            assert ob.stats().events == len(model) and ob.stats().bytes == sum(len(e.body) for e in model)
    finally:
        ob.close()
