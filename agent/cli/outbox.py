"""``andon-agent outbox``: show the queue and the dead letters; retry or purge dead letters.

Safe while the agent runs: it opens the outbox file with its own SQLite connection (WAL: readers
never block the agent, and the agent never blocks them), waits up to ``busy_timeout`` for the short
write lock, and never sets a file aside or creates one. ``show`` only reads. ``retry`` sends dead
letters to their sink again (same ids, same bodies) and deletes each one the upstream accepts; one it
refuses again stays with the new reason. ``purge`` deletes dead letters and needs ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.cli.common import EXIT_FATAL, EXIT_OK, add_config_option, config_error, read_config
from agent.config import Config
from agent.errors import ConfigError, Rejected, RetryLater
from agent.model import Severity, StoredEvent
from agent.sinks.base import Origin

EXIT_FAILED = EXIT_FATAL
BUSY_TIMEOUT_MS = 10_000


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "outbox",
        help="show the outbox's queue and dead letters; retry or purge dead letters (safe while the agent runs)",
    )
    p.add_argument("action", nargs="?", choices=["show", "retry", "purge"], default="show")
    add_config_option(p)
    p.add_argument("--sink", help="only this sink's dead letters")
    p.add_argument("--seq", type=int, action="append", help="only the dead letter with this seq (repeatable)")
    p.add_argument("--events", type=int, default=0, metavar="N", help="show: also list the N oldest queued events")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="show: list at most N dead letters (20)")
    p.add_argument("--yes", action="store_true", help="purge: really delete them")
    p.add_argument("--json", action="store_true", help="show: print one JSON object")
    return p


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"no outbox at {path} (the agent creates it when it first starts)")
    db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


def _time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _describe(body: bytes) -> dict[str, Any]:
    try:
        ev = json.loads(body)
        return {"type": ev.get("type"), "subject": ev.get("subject"), "time": ev.get("time")}
    except (ValueError, AttributeError):
        return {"type": None, "subject": None, "time": None}


def _where(args: argparse.Namespace) -> tuple[str, list[Any]]:
    clauses, params = ["1"], []
    if args.sink:
        clauses.append("sink = ?")
        params.append(args.sink)
    if args.seq:
        clauses.append(f"seq IN ({','.join('?' * len(args.seq))})")
        params += args.seq
    return " AND ".join(clauses), params


def summarize(db: sqlite3.Connection, cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``show`` prints, as plain data."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    count, size, oldest, newest = db.execute(
        "SELECT count(*), coalesce(sum(length(body)), 0), min(seq), max(seq) FROM events"
    ).fetchone()
    oldest_body = db.execute("SELECT body FROM events ORDER BY seq LIMIT 1").fetchone()
    cursors = dict(db.execute("SELECT sink, seq FROM cursors").fetchall())
    sinks = []
    names = [s.id for s in cfg.sinks] + sorted(
        {r[0] for r in db.execute("SELECT DISTINCT sink FROM dead_letters")} - {s.id for s in cfg.sinks}
    )
    for name in names:
        cursor = cursors.get(name)
        pending = db.execute("SELECT count(*) FROM events WHERE seq > ?", (cursor,)).fetchone()[0] if cursor else count
        dl, dl_oldest = db.execute("SELECT count(*), min(time) FROM dead_letters WHERE sink = ?", (name,)).fetchone()
        sinks.append(
            {
                "sink": name,
                "configured": name in {s.id for s in cfg.sinks},
                "pending": pending,
                "cursor": cursor,
                "dead_letters": dl,
                "oldest_dead_letter": _time(dl_oldest),
            }
        )
    where, params = _where(args)
    letters = [
        {"sink": sink, "seq": seq, "id": id_, "reason": reason, "set_aside": _time(t), **_describe(body)}
        for sink, seq, id_, body, reason, t in db.execute(
            f"SELECT sink, seq, id, body, reason, time FROM dead_letters WHERE {where} ORDER BY time, seq LIMIT ?",
            [*params, args.limit],
        )
    ]
    events = [
        {"seq": seq, "id": id_, "severity": Severity(sev).label, **_describe(body)}
        for seq, id_, sev, body in db.execute(
            "SELECT seq, id, severity, body FROM events ORDER BY seq LIMIT ?", (max(0, args.events),)
        )
    ]
    return {
        "path": str(cfg.agent.state_dir / "outbox.db"),
        "events": count,
        "bytes": size,
        "max_events": cfg.outbox.max_events,
        "max_bytes": cfg.outbox.max_bytes,
        "oldest_seq": oldest,
        "oldest_time": _describe(oldest_body[0])["time"] if oldest_body else None,
        "newest_seq": newest,
        "last_seq": meta.get("last_seq"),
        "dropped": meta.get("dropped", 0),
        "dropped_unreported": meta.get("drop_n", 0),
        "dead_letters": db.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        "sinks": sinks,
        "dead_letter_list": letters,
        "oldest_events": events,
    }


def _print_summary(s: dict[str, Any]) -> None:
    mb = 1024 * 1024
    print(
        f"outbox {s['path']}: {s['events']} event(s) queued, {s['bytes'] / mb:.1f} MiB "
        f"(limits {s['max_events']} events, {s['max_bytes'] / mb:.0f} MiB)"
    )
    if s["events"]:
        print(f"  oldest: seq {s['oldest_seq']} from {s['oldest_time']}; newest: seq {s['newest_seq']}")
    print(f"  dropped because full: {s['dropped']} in total, {s['dropped_unreported']} not yet reported upstream")
    for k in s["sinks"]:
        note = "" if k["configured"] else " (no longer configured)"
        oldest = f", oldest set aside {k['oldest_dead_letter']}" if k["dead_letters"] else ""
        print(f"sink {k['sink']}{note}: {k['pending']} pending, {k['dead_letters']} dead letter(s){oldest}")
    if s["dead_letter_list"]:
        print(f"dead letters (oldest first, at most {len(s['dead_letter_list'])} shown):")
        for d in s["dead_letter_list"]:
            print(
                f"  {d['sink']} seq={d['seq']} id={d['id']} {d['type']} {d['subject']} at {d['time']}: "
                f"{d['reason']} (set aside {d['set_aside']})"
            )
    if s["oldest_events"]:
        print("oldest queued events:")
        for e in s["oldest_events"]:
            print(f"  seq={e['seq']} id={e['id']} {e['severity']} {e['type']} {e['subject']} at {e['time']}")


def _purge(db: sqlite3.Connection, args: argparse.Namespace) -> int:
    where, params = _where(args)
    n = db.execute(f"SELECT count(*) FROM dead_letters WHERE {where}", params).fetchone()[0]
    if not args.yes:
        print(f"would delete {n} dead letter(s); run again with --yes to delete them", file=sys.stderr)
        return EXIT_FAILED
    db.execute("BEGIN IMMEDIATE")
    deleted = db.execute(f"DELETE FROM dead_letters WHERE {where}", params).rowcount
    db.execute("COMMIT")
    print(f"deleted {deleted} dead letter(s)")
    return EXIT_OK


async def _send_bisect(sink: Any, events: Sequence[StoredEvent]) -> tuple[list[StoredEvent], list[tuple[int, str]]]:
    """Send; on a refusal split in halves. Returns (accepted, [(seq, reason) refused]); RetryLater escapes."""
    try:
        await sink.send(events)
    except Rejected as exc:
        if len(events) == 1:
            return [], [(events[0].seq, str(exc))]
        mid = len(events) // 2
        a1, r1 = await _send_bisect(sink, events[:mid])
        a2, r2 = await _send_bisect(sink, events[mid:])
        return a1 + a2, r1 + r2
    return list(events), []


async def _retry(db: sqlite3.Connection, cfg: Config, args: argparse.Namespace) -> int:
    from agent.sinks.registry import sink_plugin

    where, params = _where(args)
    configured = {s.id for s in cfg.sinks}
    stray = [
        r[0]
        for r in db.execute(f"SELECT DISTINCT sink FROM dead_letters WHERE {where}", params)
        if r[0] not in configured
    ]
    for name in stray:
        print(f"sink {name} is not configured: its dead letters can only be purged", file=sys.stderr)
    status = EXIT_FAILED if stray else EXIT_OK
    for index, sink_cfg in enumerate(cfg.sinks):
        if args.sink and sink_cfg.id != args.sink:
            continue
        rows = db.execute(
            f"SELECT seq, id, body FROM dead_letters WHERE sink = ? AND {where} ORDER BY seq", [sink_cfg.id, *params]
        ).fetchall()
        if not rows:
            continue
        plugin = sink_plugin(sink_cfg.kind)
        secrets = plugin.secrets(sink_cfg, index)
        sent = refused = 0
        async with plugin.open(sink_cfg, secrets, Origin(cfg.agent.gateway_id, cfg.agent.site)) as sink:
            for start in range(0, len(rows), cfg.outbox.batch_size):
                chunk = [
                    StoredEvent(s, i, Severity.WARNING, bytes(b))
                    for s, i, b in rows[start : start + cfg.outbox.batch_size]
                ]
                try:
                    accepted, again = await _send_bisect(sink, chunk)
                except RetryLater as exc:
                    print(
                        f"sink {sink_cfg.id}: the upstream does not accept events now ({exc}); "
                        f"{len(rows) - start} dead letter(s) left, try again later",
                        file=sys.stderr,
                    )
                    status = EXIT_FAILED
                    break
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "DELETE FROM dead_letters WHERE sink = ? AND seq = ?", [(sink_cfg.id, e.seq) for e in accepted]
                )
                db.executemany(
                    "UPDATE dead_letters SET reason = ?, time = ? WHERE sink = ? AND seq = ?",
                    [(reason, time.time(), sink_cfg.id, seq) for seq, reason in again],
                )
                db.execute("COMMIT")
                sent += len(accepted)
                refused += len(again)
        print(f"sink {sink_cfg.id}: {sent} dead letter(s) delivered, {refused} refused again (kept)")
        if refused:
            status = EXIT_FAILED
    return status


def run(args: argparse.Namespace) -> int:
    """The ``outbox`` subcommand. Exit status 0 when done, 1 when something was left undone."""
    try:
        _, cfg = read_config(args)
    except ConfigError as exc:
        return config_error(exc)
    path = cfg.agent.state_dir / "outbox.db"
    try:
        db = _connect(path)
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"andon-agent outbox: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.action == "purge":
            return _purge(db, args)
        if args.action == "retry":
            try:
                return asyncio.run(_retry(db, cfg, args))
            except ConfigError as exc:
                return config_error(exc)
        summary = summarize(db, cfg, args)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary)
        return EXIT_OK
    except sqlite3.Error as exc:
        print(f"andon-agent outbox: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        db.close()
