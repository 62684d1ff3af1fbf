"""The durable outbox: the only place events live between their birth and their acceptance.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk before :meth:`Outbox.append`
returns. One transaction per batch of events, together with the alert state those events change,
so a crash can never leave an event without its state or the other way round.

Each sink has a cursor (the highest ``seq`` it has settled: accepted or set aside). Events at or
below every sink's cursor are deleted. ``seq`` comes from a counter kept in the same file; a new
file starts it at the current time in milliseconds so it keeps increasing even if a damaged file
had to be set aside.

The class is synchronous and not thread-safe; :class:`AsyncOutbox` runs it on one worker thread so
the event loop never waits for a disk sync. Caller guarantees for :class:`Outbox`: calls are not
concurrent (``AsyncOutbox`` serialises them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import OutboxError
from agent.model import Severity, StoredEvent

log = logging.getLogger("andon.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    body BLOB NOT NULL
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
"""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    events: int
    dropped: int
    dead_letters: int
    oldest_seq: int | None


class Outbox:
    """Synchronous outbox on one SQLite file. See the module docstring for guarantees."""

    def __init__(self, path: Path, *, max_events: int = 100_000) -> None:
        self.path = path
        self.max_events = max_events
        self._db: sqlite3.Connection | None = None
        self._count = 0
        self._full_logged = False

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
            log.error("outbox %s is damaged (%s): moved it to %s and started a fresh one", self.path, exc, aside)
            self._db = self._connect()
        self._count = self._scalar("SELECT COUNT(*) FROM events")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', ?)", (int(time.time() * 1000),))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0)")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while aside.exists():  # never overwrite an earlier damaged file
            n += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return aside

    def close(self) -> None:
        if self._db is not None:
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
            with contextlib.suppress(sqlite3.Error):  # the work may have counted rows it then rolled back
                self._count = self._scalar("SELECT COUNT(*) FROM events")
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    # -- writing ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        return self._scalar("SELECT value FROM meta WHERE key = 'last_seq'")

    def append(self, events: Sequence[StoredEvent], alerts: Mapping[str, dict[str, Any] | None]) -> None:
        """Commit events and alert state in one synced transaction.

        ``alerts`` maps an alert key to its new state (None deletes it). The events' ``seq`` must be
        above :meth:`last_seq` and increasing. When the outbox is over ``max_events``, the oldest
        non-critical events are dropped first.
        """
        overflow = max(0, self._count + len(events) - self.max_events)

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO events (seq, id, severity, body) VALUES (?, ?, ?, ?)",
                [(e.seq, e.id, int(e.severity), e.body) for e in events],
            )
            if events:
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (events[-1].seq,))
            for key, state in alerts.items():
                if state is None:
                    db.execute("DELETE FROM alerts WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO alerts (key, state) VALUES (?, ?)", (key, json.dumps(state)))
            if overflow:
                self._drop_oldest(db, overflow)

        self._transaction(work)
        self._count += len(events) - overflow

    def _drop_oldest(self, db: sqlite3.Connection, n: int) -> None:
        for where in (f"severity < {int(Severity.CRITICAL)}", "1"):
            got = db.execute(
                f"DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE {where} ORDER BY seq LIMIT ?)",
                (n,),
            ).rowcount
            n -= got
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (got,))
            if n <= 0:
                break
        if not self._full_logged:
            self._full_logged = True
            log.error("outbox is full (%d events): dropping the oldest non-critical events", self.max_events)

    # -- reading and settling ----------------------------------------------------------------

    def alerts(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, state FROM alerts")}

    def set_sinks(self, sinks: Iterable[str]) -> None:
        """Register the configured sinks; forget cursors of sinks no longer configured."""
        names = list(sinks)

        def work(db: sqlite3.Connection) -> None:
            for name in names:
                db.execute("INSERT OR IGNORE INTO cursors (sink, seq) VALUES (?, 0)", (name,))
            marks = ",".join("?" * len(names))
            db.execute(f"DELETE FROM cursors WHERE sink NOT IN ({marks})", names)
            self._delete_settled(db)

        self._transaction(work)

    def pending(self, sink: str, limit: int) -> list[StoredEvent]:
        """The oldest events the sink has not settled yet, in ``seq`` order."""
        rows = self.db.execute(
            "SELECT seq, id, severity, body FROM events "
            "WHERE seq > (SELECT seq FROM cursors WHERE sink = ?) ORDER BY seq LIMIT ?",
            (sink, limit),
        ).fetchall()
        return [StoredEvent(seq, id_, Severity(sev), bytes(body)) for seq, id_, sev, body in rows]

    def depth(self, sink: str | None = None) -> int:
        if sink is None:
            return self._count
        return self._scalar("SELECT COUNT(*) FROM events WHERE seq > (SELECT seq FROM cursors WHERE sink = ?)", (sink,))

    def settle(self, sink: str, up_to: int, rejected: Sequence[tuple[StoredEvent, str]] = ()) -> None:
        """Mark every event up to ``up_to`` as done for ``sink``; ``rejected`` ones go to dead letters."""
        now = time.time()

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO dead_letters (sink, seq, id, body, reason, time) VALUES (?, ?, ?, ?, ?, ?)",
                [(sink, e.seq, e.id, e.body, reason, now) for e, reason in rejected],
            )
            db.execute("UPDATE cursors SET seq = max(seq, ?) WHERE sink = ?", (up_to, sink))
            self._delete_settled(db)

        self._transaction(work)

    def _delete_settled(self, db: sqlite3.Connection) -> None:
        low = db.execute("SELECT min(seq) FROM cursors").fetchone()[0]
        if low is not None:
            self._count -= db.execute("DELETE FROM events WHERE seq <= ?", (low,)).rowcount

    def stats(self) -> OutboxStats:
        return OutboxStats(
            events=self._count,
            dropped=self._scalar("SELECT value FROM meta WHERE key = 'dropped'"),
            dead_letters=self._scalar("SELECT COUNT(*) FROM dead_letters"),
            oldest_seq=self.db.execute("SELECT min(seq) FROM events").fetchone()[0],
        )


T = TypeVar("T")


class AsyncOutbox:
    """Runs an :class:`Outbox` on one worker thread, so calls are serialised and never block the loop."""

    def __init__(self, outbox: Outbox) -> None:
        self.sync = outbox
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def __aenter__(self) -> AsyncOutbox:
        await self.call(self.sync.open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.call(self.sync.close)
        self._pool.shutdown(wait=True)
