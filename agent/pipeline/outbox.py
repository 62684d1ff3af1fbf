"""The durable outbox: the only place events live between their birth and their acceptance.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk before :meth:`Outbox.append`
returns. One transaction per batch of events, together with the alert state those events change,
so a crash can never leave an event without its state or the other way round.

Each sink has a cursor (the highest ``seq`` it has settled: accepted, set aside or skipped by its
routing) and the set of alerts it has seen (``sink_alerts``: sent a raised and no cleared since),
changed by the same transaction that moves its cursor. Each event keeps, beside its body, the
``type``, ``subject`` and ``machine`` routing needs (read from the body once if the writer did not
give them). Events at or below every sink's cursor are
deleted. ``seq`` comes from a counter kept in the same file, taken by :meth:`Outbox.emit` inside the
transaction that stores the event (so it can never be reused); a new file starts it at the current
time in milliseconds so it keeps increasing even if a damaged file
had to be set aside.

The same file holds the usage fold's state and its local history (``usage_state``,
``usage_periods``, ``usage_tool_changes``): :mod:`agent.pipeline.usagelog` writes them inside the
transactions that commit the alert transitions they come from (``emit(..., also=...)``).

Bounds. The queue holds at most ``max_events`` events and ``max_bytes`` bytes of event bodies; a
commit that would pass either drops the oldest non-critical events first (critical ones only when
nothing else is left), in the same transaction. Drops are counted (in total, and "not yet reported"
with their ``seq`` range) so the agent can tell the upstream once the link is back
(:meth:`drop_report`, reported by ``append(..., reported_drops=n)``). Dead letters are never
deleted here (only ``andon-agent outbox retry|purge`` removes them): ``max_dead_letters`` is how
many delivery may set aside (:meth:`dead_letter_room`); at the limit a sink holds its queue instead.

The file does not grow without bound: deleted rows leave free pages that SQLite reuses for new
rows (so the file never grows past its high-water mark, which the bounds limit); a new file uses
``auto_vacuum=INCREMENTAL`` and, after the queue drains, gives a large free list back to the
filesystem. The WAL is checkpointed automatically every ``wal_autocheckpoint`` pages, truncated to
``journal_size_limit`` after a checkpoint, and checkpointed with TRUNCATE after a drain when it
grew large (a reader such as ``andon-agent outbox`` can hold a checkpoint back for a while).

A damaged file (not a database, or SQLite finds it malformed) is set aside with a timestamped
name (``outbox.db.damaged-<UTC time>``), logged loudly, and replaced by an empty one: at open, and
also when a read or write finds the damage while running. An error that says nothing about the
contents (locked, permissions, I/O) is never taken for damage.

A full disk (``SQLITE_FULL``: ENOSPC, or ``max_page_count``) makes writes raise
:class:`~agent.errors.OutboxError`; it is logged once, and the next write that succeeds logs the
recovery. Nothing is half-written: the transaction is rolled back.

The class is synchronous and not thread-safe; :class:`AsyncOutbox` runs it on one worker thread so
the event loop never waits for a disk sync. Caller guarantees for :class:`Outbox`: calls are not
concurrent (``AsyncOutbox`` serialises them). :meth:`Outbox.stats` and the plain counters are the
exception: they read values kept in memory and may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import OutboxError
from agent.model import Severity, StoredEvent
from agent.sinks.routing import described

log = logging.getLogger("andon.outbox")

Draft = Callable[[int], StoredEvent]  # builds an event once the outbox has given it its seq
Write = Callable[[sqlite3.Connection], None]  # more rows written inside a commit's transaction

DEFAULT_MAX_EVENTS = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # event bodies; see README "Outbox and delivery" for why
DEFAULT_MAX_DEAD_LETTERS = 10_000
WAL_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, set explicitly: about 4 MB of WAL
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is cut back to this after a checkpoint
WAL_TRUNCATE_AFTER_DRAIN = 1024 * 1024  # a WAL larger than this is checkpointed (TRUNCATE) after a drain
VACUUM_MIN_FREE_PAGES = 256  # after a drain, give free pages back when more than this (and > 1/4 of the file)
_CRITICAL = int(Severity.CRITICAL)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    body BLOB NOT NULL,
    type TEXT,  -- the CloudEvent's type, subject and data.machine, for routing without parsing the body
    subject TEXT,
    machine TEXT
);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (sink, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sink_alerts (sink TEXT NOT NULL, alert TEXT NOT NULL, PRIMARY KEY (sink, alert));
CREATE TABLE IF NOT EXISTS usage_state (machine TEXT PRIMARY KEY, clock REAL NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage_periods (
    machine TEXT NOT NULL,
    period_start REAL NOT NULL,
    period_end REAL NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (machine, period_start)
);
CREATE TABLE IF NOT EXISTS usage_tool_changes (
    machine TEXT NOT NULL,
    rule TEXT NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_tool_changes_time ON usage_tool_changes (time);
"""

# meta keys: the seq counter, the drop tally, and the drops not yet reported upstream
_META_DEFAULTS = ("dropped", "drop_n", "drop_first", "drop_last", "drop_since", "drop_critical")


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file an older agent wrote up to date, each step in one transaction (a new file skips them).

    ``sink_alerts`` (what each sink has seen): before routing every sink got every event, so each
    sink has seen every alert that is still active. The events' ``type``, ``subject`` and ``machine``
    columns: read once from the bodies of the events waiting in the file.
    """
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if {"cursors", "alerts"} <= tables and "sink_alerts" not in tables:
        db.executescript(
            "BEGIN IMMEDIATE;"
            "CREATE TABLE sink_alerts (sink TEXT NOT NULL, alert TEXT NOT NULL, PRIMARY KEY (sink, alert));"
            "INSERT INTO sink_alerts (sink, alert) SELECT c.sink, a.key FROM cursors c CROSS JOIN alerts a;"
            "COMMIT;"
        )
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "events" in tables and "type" not in columns:
        db.execute("BEGIN IMMEDIATE")
        try:
            for name in ("type", "subject", "machine"):
                db.execute(f"ALTER TABLE events ADD COLUMN {name} TEXT")
            rows = db.execute("SELECT seq, id, severity, body FROM events").fetchall()
            described_rows = (described(StoredEvent(seq, i, Severity(sev), bytes(body))) for seq, i, sev, body in rows)
            db.executemany(
                "UPDATE events SET type = ?, subject = ?, machine = ? WHERE seq = ?",
                [(e.type, e.subject, e.machine, e.seq) for e in described_rows],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


@dataclass(frozen=True, slots=True)
class DropReport:
    """Events dropped (the outbox was full) and not yet reported upstream."""

    count: int
    first_seq: int  # the oldest and newest seq among them
    last_seq: int
    since: float  # wall clock of the first of these drops
    critical: int  # how many of them were critical


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot of the outbox's counters (for metrics); reading it never touches the file."""

    events: int
    bytes: int  # sum of the queued events' bodies
    max_events: int
    max_bytes: int
    dropped: int  # in total, since the file was created
    dropped_unreported: int  # dropped and not yet reported upstream
    dead_letters: int
    oldest_seq: int | None
    disk_full: bool  # the last write failed because the disk (or file) is full
    write_errors: int  # writes refused since start (disk full, I/O errors)
    file_bytes: int  # the database file and its WAL on disk
    sink_depths: dict[str, int]  # events each sink has not settled yet
    oldest_time: float | None  # wall-clock time (the CloudEvent's ``time``) of the oldest event kept


class Outbox:
    """Synchronous outbox on one SQLite file. See the module docstring for guarantees."""

    def __init__(
        self,
        path: Path,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS,
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_dead_letters = max_dead_letters
        self._db: sqlite3.Connection | None = None
        self._count = 0
        self._bytes = 0
        self._dead = 0
        self._oldest: int | None = None
        self._oldest_time: float | None = None
        # Per sink, kept up to date by every commit and settle, so that stats() (the status endpoints)
        # never has to ask the file. Replaced as a whole when sinks come or go: readers on other
        # threads copy them safely.
        self._cursors: dict[str, int] = {}
        self._depths: dict[str, int] = {}
        self._dropped = 0
        self.unreported_drops = 0  # read by the delivery loop (any thread): a plain int
        self._full_logged = False
        self._disk_full = False
        self._write_errors = 0
        self._sinks: list[str] = []
        self._drop_floor = 0  # every non-critical event at or below this seq has been dropped already

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file. A damaged file is set aside with a timestamped name."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.OperationalError as exc:  # locked, unreadable, disk I/O: not damage, never set aside
            raise OutboxError(f"outbox {self.path}: cannot open: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            aside = self._set_aside()
            log.error(
                "OUTBOX DAMAGED: %s could not be read (%s); moved it to %s for a post-mortem and started an "
                "empty outbox. Events that were waiting in it are not delivered.",
                self.path,
                exc,
                aside,
            )
            try:
                self._db = self._connect()
            except sqlite3.Error as again:
                raise OutboxError(f"outbox {self.path}: cannot create a fresh outbox: {again}") from again
        self._recount()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only on a new, empty file
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            _migrate(db)
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', ?)", (int(time.time() * 1000),))
            db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)", [(k,) for k in _META_DEFAULTS])
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():  # never overwrite an earlier damaged file
            n += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        _fsync_dir(self.path.parent)  # the renames reach the disk before a fresh file takes the name
        return aside

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):  # a clean stop leaves no WAL behind
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None

    # -- helpers ---------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    def _scalar(self, sql: str, args: Sequence[Any] = ()) -> int:
        row = self.db.execute(sql, args).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _meta(self, key: str) -> int:
        return self._scalar("SELECT value FROM meta WHERE key = ?", (key,))

    def _recount(self) -> None:
        """Read the counters kept in memory back from the file (at open, and after a failed write)."""
        db = self.db
        self._count, self._bytes = db.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM events").fetchone()
        self._oldest = db.execute("SELECT min(seq) FROM events").fetchone()[0]
        self._oldest_time = self._time_of(self._oldest)
        rows = db.execute(
            "SELECT c.sink, c.seq, (SELECT count(*) FROM events e WHERE e.seq > c.seq) FROM cursors c"
        ).fetchall()
        self._cursors = {str(sink): int(seq) for sink, seq, _ in rows}
        self._depths = {str(sink): int(n) for sink, _, n in rows}
        self._dead = self._scalar("SELECT count(*) FROM dead_letters")
        self._drop_floor = 0
        self._dropped = self._meta("dropped")
        self.unreported_drops = self._meta("drop_n")

    def _time_of(self, seq: int | None) -> float | None:
        """The ``time`` of event ``seq`` (None if there is none, or it has no readable time)."""
        if seq is None:
            return None
        row = self.db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        try:
            return datetime.fromisoformat(json.loads(row[0])["time"]).timestamp()
        except (TypeError, ValueError, KeyError):
            return None

    def _set_oldest(self, seq: int | None) -> None:
        if seq != self._oldest:
            self._oldest = seq
            self._oldest_time = self._time_of(seq)

    def _transaction(self, work: Callable[[sqlite3.Connection], None]) -> None:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._write_errors += 1  # the counters in memory change only after a commit: nothing to undo
            raise self._failed(exc) from exc
        if self._disk_full:
            self._disk_full = False
            log.info("outbox %s: writing again (the disk has space)", self.path)

    def _failed(self, exc: sqlite3.Error) -> OutboxError:
        """Log (once) what a failed read or write means; set a file found damaged aside. Returns the error."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            if not self._disk_full:
                self._disk_full = True
                log.error(
                    "outbox %s: the disk is full (%s): new events cannot be committed and wait in the "
                    "machines' rule state (tried again on every poll); delivery goes on; writing resumes "
                    "by itself when there is space again",
                    self.path,
                    exc,
                )
            return OutboxError(f"outbox {self.path}: disk full: {exc}")
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            self.close()
            aside = self._set_aside()
            log.error(
                "OUTBOX DAMAGED while running: %s (%s); moved it to %s for a post-mortem and started an empty "
                "outbox. Events that were waiting in it are not delivered.",
                self.path,
                exc,
                aside,
            )
            try:
                self._db = self._connect()
                self._db.executemany(
                    "INSERT OR IGNORE INTO cursors (sink, seq) VALUES (?, 0)", [(n,) for n in self._sinks]
                )
                self._recount()
            except sqlite3.Error as again:
                return OutboxError(f"outbox {self.path}: cannot create a fresh outbox: {again}")
        return OutboxError(f"outbox {self.path}: {exc}")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    # -- writing ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        (row,) = self._read("SELECT value FROM meta WHERE key = 'last_seq'")
        return int(row[0])

    def append(
        self,
        events: Sequence[StoredEvent],
        alerts: Mapping[str, dict[str, Any] | None],
        reported_drops: int = 0,
    ) -> None:
        """Commit events whose ``seq`` the caller chose, and alert state, in one synced transaction.

        ``alerts`` maps an alert key to its new state (None deletes it). The events' ``seq`` must be
        above :meth:`last_seq` and increasing (tests and tools; the agent uses :meth:`emit`, which
        numbers events itself). When the outbox would pass ``max_events`` or ``max_bytes``, the
        oldest non-critical events are dropped first. ``reported_drops``: these events report that
        many drops upstream (see :meth:`drop_report`), so they no longer count as unreported.
        """
        self._commit(lambda last: list(events), alerts, reported_drops)

    def emit(
        self,
        drafts: Sequence[Draft],
        alerts: Mapping[str, dict[str, Any] | None],
        reported_drops: int = 0,
        also: Write | None = None,
    ) -> list[StoredEvent]:
        """Like :meth:`append`, but the outbox numbers the events, inside the same transaction.

        Each draft is called with the event's ``seq`` (the next after :meth:`last_seq` as the file
        has it) and returns the event. So ``seq`` comes from the file's own counter in the
        transaction that stores it: a caller that was cancelled, or failed, can never reuse one.
        Returns the committed events. ``also`` writes more rows in the same transaction (the usage
        fold's state and history, :mod:`agent.pipeline.usagelog`).
        """
        return self._commit(
            lambda last: [draft(last + n) for n, draft in enumerate(drafts, 1)], alerts, reported_drops, also
        )

    def _commit(
        self,
        build: Callable[[int], list[StoredEvent]],
        alerts: Mapping[str, dict[str, Any] | None],
        reported_drops: int,
        also: Write | None = None,
    ) -> list[StoredEvent]:
        """One transaction: ``build(last_seq)`` gives the events; they, the alert state, the drops and ``also``."""
        events: list[StoredEvent] = []
        dropped: list[tuple[int, int, int]] = []

        def work(db: sqlite3.Connection) -> None:
            events.extend(build(self._scalar("SELECT value FROM meta WHERE key = 'last_seq'")))
            if also is not None:
                also(db)
            db.executemany(
                "INSERT INTO events (seq, id, severity, body, type, subject, machine) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.seq, e.id, int(e.severity), e.body, e.type, e.subject, e.machine) for e in map(described, events)],
            )
            if events:
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (events[-1].seq,))
            for key, state in alerts.items():
                if state is None:
                    db.execute("DELETE FROM alerts WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO alerts (key, state) VALUES (?, ?)", (key, json.dumps(state)))
            if reported_drops:
                self._mark_reported(db, reported_drops)
            excess_n = self._count + len(events) - self.max_events
            excess_b = self._bytes + sum(len(e.body) for e in events) - self.max_bytes
            if excess_n > 0 or excess_b > 0:
                dropped.extend(self._drop_oldest(db, excess_n, excess_b))

        self._transaction(work)
        self._count += len(events) - len(dropped)
        self._bytes += sum(len(e.body) for e in events) - sum(d[2] for d in dropped)
        for sink, cursor in self._cursors.items():  # new events are above every cursor; drops may be too
            self._depths[sink] += len(events) - sum(1 for seq, _, _ in dropped if seq > cursor)
        if events and self._oldest is None:
            self._set_oldest(events[0].seq)
        self._drop_floor = max([self._drop_floor] + [seq for seq, sev, _ in dropped if sev < _CRITICAL])
        if dropped or reported_drops:
            tally = dict(self._read("SELECT key, value FROM meta WHERE key IN ('dropped', 'drop_n')"))
            self._dropped, self.unreported_drops = tally["dropped"], tally["drop_n"]
            self._set_oldest(self._read("SELECT min(seq) FROM events")[0][0])
        return events

    def _mark_reported(self, db: sqlite3.Connection, n: int) -> None:
        db.execute("UPDATE meta SET value = max(0, value - ?) WHERE key = 'drop_n'", (n,))
        if self._scalar("SELECT value FROM meta WHERE key = 'drop_n'") == 0:
            db.execute(
                "UPDATE meta SET value = 0 WHERE key IN ('drop_first', 'drop_last', 'drop_since', 'drop_critical')"
            )
        self._full_logged = False  # a new episode of drops is logged again

    def _drop_oldest(self, db: sqlite3.Connection, excess_n: int, excess_b: int) -> list[tuple[int, int, int]]:
        """Delete the oldest events, non-critical first, until both bounds hold. Returns (seq, severity, size)."""
        victims: list[tuple[int, int, int]] = []
        freed_n = freed_b = 0
        # A long outage keeps critical events at the head of the queue: the search for the oldest
        # non-critical one starts after the last one dropped, not at the head, so it stays short.
        for where, after in ((f"severity < {_CRITICAL}", self._drop_floor), (f"severity >= {_CRITICAL}", -1)):
            while freed_n < excess_n or freed_b < excess_b:
                rows = db.execute(
                    f"SELECT seq, severity, length(body) FROM events WHERE {where} AND seq > ? ORDER BY seq LIMIT ?",
                    (after, max(64, excess_n - freed_n)),
                ).fetchall()
                if not rows:
                    break
                for seq, severity, size in rows:
                    victims.append((seq, severity, size))
                    freed_n += 1
                    freed_b += size
                    after = seq
                    if freed_n >= excess_n and freed_b >= excess_b:
                        break
        if not victims:
            return victims
        db.executemany("DELETE FROM events WHERE seq = ?", [(v[0],) for v in victims])
        n, critical = len(victims), sum(1 for v in victims if v[1] >= _CRITICAL)
        first, last = min(v[0] for v in victims), max(v[0] for v in victims)
        db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (n,))
        if self._scalar("SELECT value FROM meta WHERE key = 'drop_n'") == 0:
            db.execute("UPDATE meta SET value = ? WHERE key = 'drop_since'", (int(time.time() * 1000),))
            db.execute("UPDATE meta SET value = ? WHERE key = 'drop_first'", (first,))
        else:
            db.execute("UPDATE meta SET value = min(value, ?) WHERE key = 'drop_first'", (first,))
        db.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'drop_last'", (last,))
        db.execute("UPDATE meta SET value = value + ? WHERE key = 'drop_n'", (n,))
        db.execute("UPDATE meta SET value = value + ? WHERE key = 'drop_critical'", (critical,))
        if not self._full_logged:
            self._full_logged = True
            log.error(
                "outbox is full (limits: %d events, %d bytes): dropping the oldest non-critical events; "
                "the upstream is told how many once it accepts events again",
                self.max_events,
                self.max_bytes,
            )
        return victims

    def drop_report(self) -> DropReport | None:
        """The drops not yet reported upstream, or None."""
        values = dict(self._read("SELECT key, value FROM meta WHERE key LIKE 'drop_%'"))
        if not values.get("drop_n"):
            return None
        return DropReport(
            count=values["drop_n"],
            first_seq=values["drop_first"],
            last_seq=values["drop_last"],
            since=values["drop_since"] / 1000,
            critical=values["drop_critical"],
        )

    # -- reading and settling ----------------------------------------------------------------

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query (a read on the worker thread; damage is handled as for every read)."""
        return self._read(sql, args)

    def write(self, work: Write) -> None:
        """One synced transaction of other rows than events: ``work`` runs inside it."""
        self._transaction(work)

    def alerts(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self._read("SELECT key, state FROM alerts")}

    def set_sinks(self, sinks: Iterable[str]) -> None:
        """Register the configured sinks; forget cursors of sinks no longer configured."""
        names = list(sinks)
        self._sinks = names  # registered again if a damaged file has to be replaced while running

        def work(db: sqlite3.Connection) -> None:
            for name in names:
                db.execute("INSERT OR IGNORE INTO cursors (sink, seq) VALUES (?, 0)", (name,))
            marks = ",".join("?" * len(names))
            db.execute(f"DELETE FROM cursors WHERE sink NOT IN ({marks})", names)
            db.execute(f"DELETE FROM sink_alerts WHERE sink NOT IN ({marks})", names)
            self._delete_settled(db)

        self._transaction(work)
        self._recount()

    def pending(self, sink: str, limit: int) -> list[StoredEvent]:
        """The oldest events the sink has not settled yet, in ``seq`` order."""
        rows = self._read(
            "SELECT seq, id, severity, body, type, subject, machine FROM events "
            "WHERE seq > (SELECT seq FROM cursors WHERE sink = ?) ORDER BY seq LIMIT ?",
            (sink, limit),
        )
        return [
            StoredEvent(seq, id_, Severity(sev), bytes(body), type_ or "", subject, machine)
            for seq, id_, sev, body, type_, subject, machine in rows
        ]

    def depth(self, sink: str | None = None) -> int:
        if sink is None:
            return self._count
        (row,) = self._read("SELECT COUNT(*) FROM events WHERE seq > (SELECT seq FROM cursors WHERE sink = ?)", (sink,))
        return int(row[0])

    def cursor(self, sink: str) -> int:
        """The highest ``seq`` the sink has settled (0 for a sink not registered)."""
        rows = self._read("SELECT seq FROM cursors WHERE sink = ?", (sink,))
        return int(rows[0][0]) if rows else 0

    def depth_before(self, sink: str, seq: int) -> int:
        """How many events the sink has still to settle before ``seq``."""
        rows = self._read(
            "SELECT COUNT(*) FROM events WHERE seq < ? AND seq > (SELECT seq FROM cursors WHERE sink = ?)", (seq, sink)
        )
        return int(rows[0][0])

    def dead_letter_reason(self, sink: str, seq: int) -> str | None:
        """Why the sink refused event ``seq``, if it set it aside as a dead letter."""
        rows = self._read("SELECT reason FROM dead_letters WHERE sink = ? AND seq = ?", (sink, seq))
        return str(rows[0][0]) if rows else None

    def seen(self, sink: str) -> set[str]:
        """The alerts ``sink`` has seen: sent a raised of, and no cleared since."""
        return {row[0] for row in self._read("SELECT alert FROM sink_alerts WHERE sink = ?", (sink,))}

    def settle(
        self,
        sink: str,
        up_to: int,
        rejected: Sequence[tuple[StoredEvent, str]] = (),
        seen: Mapping[str, bool] | None = None,
    ) -> None:
        """Mark every event up to ``up_to`` as done for ``sink``; ``rejected`` ones go to dead letters;
        ``seen`` opens (True) or closes (False) alerts in the sink's seen set, in the same transaction.

        Dead letters are kept whatever their number: the caller asks :meth:`dead_letter_room` first.
        """
        now = time.time()
        freed: list[int] = []
        settled: list[int] = []  # events this settle moves the sink's cursor past
        before = self._cursors.get(sink)
        opened = [(sink, k) for k, is_open in (seen or {}).items() if is_open]
        closed = [(sink, k) for k, is_open in (seen or {}).items() if not is_open]

        def work(db: sqlite3.Connection) -> None:
            if opened:
                db.executemany("INSERT OR IGNORE INTO sink_alerts (sink, alert) VALUES (?, ?)", opened)
            if closed:
                db.executemany("DELETE FROM sink_alerts WHERE sink = ? AND alert = ?", closed)
            if rejected:
                db.executemany(
                    "INSERT OR REPLACE INTO dead_letters (sink, seq, id, body, reason, time) VALUES (?, ?, ?, ?, ?, ?)",
                    [(sink, e.seq, e.id, e.body, reason, now) for e, reason in rejected],
                )
            if before is not None and up_to > before:
                settled.append(self._scalar("SELECT count(*) FROM events WHERE seq > ? AND seq <= ?", (before, up_to)))
            db.execute("UPDATE cursors SET seq = max(seq, ?) WHERE sink = ?", (up_to, sink))
            freed.extend(self._delete_settled(db))

        self._transaction(work)
        if before is not None and up_to > before:
            self._cursors[sink] = up_to
            self._depths[sink] -= settled[0]
        self._dead = int(self._read("SELECT count(*) FROM dead_letters")[0][0])  # `andon-agent outbox` changes them
        if freed:
            self._count -= len(freed)
            self._bytes -= sum(freed)
            self._set_oldest(self._read("SELECT min(seq) FROM events")[0][0])
            if self._count == 0:
                self._after_drain()

    def dead_letter_room(self) -> int:
        """How many more dead letters may be set aside (``max_dead_letters`` minus those kept, read
        from the file: ``andon-agent outbox retry|purge`` may have removed some meanwhile)."""
        self._dead = int(self._read("SELECT count(*) FROM dead_letters")[0][0])
        return max(0, self.max_dead_letters - self._dead)

    def _delete_settled(self, db: sqlite3.Connection) -> list[int]:
        """Delete events every sink has settled; returns their body sizes."""
        low = db.execute("SELECT min(seq) FROM cursors").fetchone()[0]
        if low is None:
            return []
        return [row[0] for row in db.execute("DELETE FROM events WHERE seq <= ? RETURNING length(body)", (low,))]

    def _after_drain(self) -> None:
        """The queue is empty: keep the WAL and the file small (best effort, never raises)."""
        try:
            free = self._scalar("PRAGMA freelist_count")
            if (
                self._scalar("PRAGMA auto_vacuum") == 2
                and free > VACUUM_MIN_FREE_PAGES
                and free * 4 > self._scalar("PRAGMA page_count")
            ):
                self.db.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only
                log.debug("outbox: gave %d free pages back to the filesystem", free)
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > WAL_TRUNCATE_AFTER_DRAIN:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except (sqlite3.Error, OSError) as exc:
            log.debug("outbox: maintenance after drain skipped: %s", exc)

    def checkpoint(self) -> None:
        """Checkpoint the WAL into the file and truncate it (best effort)."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def stats(self) -> OutboxStats:
        """The counters, from memory (safe from any thread, never waits for the disk)."""
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return OutboxStats(
            events=self._count,
            bytes=self._bytes,
            max_events=self.max_events,
            max_bytes=self.max_bytes,
            dropped=self._dropped,
            dropped_unreported=self.unreported_drops,
            dead_letters=self._dead,
            oldest_seq=self._oldest,
            disk_full=self._disk_full,
            write_errors=self._write_errors,
            file_bytes=size,
            sink_depths=dict(self._depths),
            oldest_time=self._oldest_time,
        )


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a rename is an update of the directory, not of the file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


T = TypeVar("T")


async def finished(job: asyncio.Future[T]) -> T:
    """The result of a job running on the outbox's worker thread, which is never abandoned.

    If the awaiting task is cancelled meanwhile, this still waits until the job has finished (a
    commit takes milliseconds; at most the 5 s busy timeout) and only then raises
    ``CancelledError``, so the caller's cleanup knows what the job did: a commit that the disk
    holds is never taken for one that did not happen.
    """
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait({job})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return job.result()


def succeeded(job: asyncio.Future[Any]) -> bool:
    """True when the job has finished without an error (its result may be read)."""
    return job.done() and not job.cancelled() and job.exception() is None


class AsyncOutbox:
    """Runs an :class:`Outbox` on one worker thread, so calls are serialised and never block the loop.

    A call, once made, always runs to its end: cancelling the caller does not cut a transaction
    off from the code that waits for it (see :func:`finished`).
    """

    def __init__(self, outbox: Outbox) -> None:
        self.sync = outbox
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` on the worker thread; await the job with :func:`finished`."""
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await finished(self.submit(fn, *args))

    async def __aenter__(self) -> AsyncOutbox:
        await self.call(self.sync.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.call(self.sync.close)
        self._pool.shutdown(wait=True)
