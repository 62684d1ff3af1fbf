"""The local usage history, read: :func:`usage_report` for ``andon-agent report`` and the andon board.

::

    usage_report(db_path, since) -> {machine: {summary fields over the periods since `since`}}

It reads what :mod:`agent.pipeline.usagelog` stored in the outbox's file: the summaries of the
periods that ended (exactly the ``andon.usage.summary`` events' data), the period under way up to
the machine's last observation (the fold state), and the tool changes (the ``andon.tool.changed``
events' data). So the customer's engineer sees what the maker receives.

Read-only and safe while the agent runs: its own SQLite connection (``mode=ro``; WAL readers never
block the agent, nor the agent them), and it never creates, changes or sets aside a file. Without a
WAL file next to the database (the agent is not running), the file is opened ``immutable``, so
that a reader run as another user (``sudo``) leaves no ``-wal``/``-shm`` files the agent could not
open. It blocks: call it from a thread when on an event loop (90 days of a few machines take a few
milliseconds; ``bench/report_history.py`` measures it).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.pipeline.usage import from_json, so_far, summary_data

SECONDS = ("online_seconds", "offline_seconds", "unobserved_seconds")


def connect_read_only(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to the outbox file; FileNotFoundError when there is none."""
    if not db_path.exists():
        raise FileNotFoundError(f"no outbox at {db_path} (the agent creates it when it first starts)")
    uri = db_path.resolve().as_uri() + ("?mode=ro" if Path(f"{db_path}-wal").exists() else "?mode=ro&immutable=1")
    db = sqlite3.connect(uri, uri=True, timeout=10)
    db.execute("PRAGMA query_only=1")
    return db


def usage_report(db_path: Path, since: float) -> dict[str, dict[str, Any]]:
    """Per machine (sorted by id): the usage summary's fields over every period that ends after
    ``since`` (wall clock), the period under way included (up to the machine's last observation).

    Each value has ``machine``, ``period_start`` and ``period_end`` (RFC 3339: the first period's
    start, the last one's end), ``periods`` (how many ended), ``online_seconds``,
    ``offline_seconds``, ``unobserved_seconds``, ``alerts`` (per rule: ``raised``,
    ``active_seconds``), ``codes`` (per ``"<rule>/<code>"``: ``rule``, ``code``, ``count``,
    ``active_seconds``, ``text``; most frequent first) and ``tool_changes`` (per rule: ``tool``,
    ``count``, ``mean_life_fraction``, ``min_life_fraction``; the fractions null when no change had
    a known life). A file without usage history gives ``{}``. Read-only (see the module docstring).
    """
    db = connect_read_only(db_path)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "usage_state" not in tables:
            return {}
        summaries: dict[str, list[dict[str, Any]]] = {}
        for machine, doc in db.execute(
            "SELECT machine, summary FROM usage_periods WHERE period_end > ? ORDER BY machine, period_start", (since,)
        ):
            summaries.setdefault(machine, []).append(json.loads(doc))
        for machine, doc in db.execute("SELECT machine, state FROM usage_state"):
            state = from_json(json.loads(doc))
            if state.clock > since:
                summaries.setdefault(machine, []).append(summary_data(so_far(state)))
        first = min((_epoch(s[0]["period_start"]) for s in summaries.values()), default=since)
        changes: dict[str, list[dict[str, Any]]] = {}
        for machine, doc in db.execute(
            "SELECT machine, data FROM usage_tool_changes WHERE time >= ? ORDER BY time", (min(first, since),)
        ):
            changes.setdefault(machine, []).append(json.loads(doc))
    finally:
        db.close()
    return {m: combine(m, summaries[m], changes.get(m, ())) for m in sorted(summaries)}


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def combine(
    machine: str, summaries: Sequence[Mapping[str, Any]], changes: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Pure: summaries of consecutive periods (oldest first) and the tool changes in them -> one report."""
    out: dict[str, Any] = {
        "machine": machine,
        "period_start": summaries[0]["period_start"],
        "period_end": summaries[-1]["period_end"],
    }
    for key in SECONDS:
        out[key] = round(sum(s[key] for s in summaries), 3)
    alerts: dict[str, dict[str, Any]] = {}
    codes: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for rule, a in s["alerts"].items():
            total = alerts.setdefault(rule, {"raised": 0, "active_seconds": 0.0})
            total["raised"] += a["raised"]
            total["active_seconds"] = round(total["active_seconds"] + a["active_seconds"], 3)
        for key, c in s["codes"].items():
            total = codes.setdefault(key, {"rule": c["rule"], "code": c["code"], "count": 0, "active_seconds": 0.0})
            total["count"] += c["count"]
            total["active_seconds"] = round(total["active_seconds"] + c["active_seconds"], 3)
            total["text"] = c["text"] or total.get("text", "")
    out["alerts"] = alerts
    out["codes"] = dict(sorted(codes.items(), key=lambda kv: (-kv[1]["count"], -kv[1]["active_seconds"], kv[0])))
    out["tool_changes"] = tool_changes(changes)
    return out


def tool_changes(changes: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pure: ``andon.tool.changed`` data -> per rule ``tool``, ``count``, mean and min life fraction."""
    per: dict[str, list[Mapping[str, Any]]] = {}
    for c in changes:
        per.setdefault(c["rule"], []).append(c)
    out: dict[str, dict[str, Any]] = {}
    for rule, items in per.items():
        known = [c["life_fraction"] for c in items if c["life_fraction"] is not None]
        out[rule] = {
            "tool": items[-1]["tool"],
            "count": len(items),
            "mean_life_fraction": round(sum(known) / len(known), 4) if known else None,
            "min_life_fraction": min(known) if known else None,
        }
    return out
