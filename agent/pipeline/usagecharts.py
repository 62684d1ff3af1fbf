"""The board's usage charts: tool life achieved and faults by code per machine, drawn from the
usage history (:func:`agent.pipeline.usagereport.usage_report`) off the event loop, at a bounded rate.

::

    UsageCharts.run: every REFRESH s, and soon after a usage event (at most once per GAP s)
        thread: usage_report(outbox.db, now - DAYS) + the tool changes' early / unwarned counts
                -> agent.ops.board.svg.tool_life / faults -> {name: svg}
        loop:   keep them; if any changed, bump ``version`` and tell the board (one SSE update)
    BoardFeed.view -> names + version (cheap);  GET /api/charts/<name>.svg -> the kept SVG

The history is read with its own read-only connection (WAL: it never blocks the agent); a read
takes a few milliseconds for a few machines over 30 days and is bounded by the window and the
configured machines. A file that cannot be read keeps the last charts and is said once
(:class:`~agent.ops.logs.Trouble`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.ops.board.svg import EARLY, faults, tool_life
from agent.ops.logs import Trouble
from agent.pipeline.usagereport import connect_read_only, usage_report

log = logging.getLogger("andon.board")

DAYS = 30.0  # the charts' window (as `andon-agent report`'s default)
REFRESH = 60.0  # seconds between reads of the history
GAP = 2.0  # seconds at least between two reads (a burst of tool changes is one read)


def change_counts(changes: Iterable[Mapping[str, Any]], early: float = EARLY) -> dict[str, dict[str, int]]:
    """Pure: tool changes (``andon.tool.changed`` data) -> per rule ``early`` (changed below
    ``early`` of its life) and ``unwarned`` (no warning before the change)."""
    out: dict[str, dict[str, int]] = {}
    for c in changes:
        counts = out.setdefault(c["rule"], {"early": 0, "unwarned": 0})
        fraction = c.get("life_fraction")
        counts["early"] += fraction is not None and fraction < early
        counts["unwarned"] += c.get("warned_seconds") is None
    return out


def draw(report: Mapping[str, Mapping[str, Any]], machines: Sequence[str], days: float) -> dict[str, str]:
    """Pure: the usage report (with ``early`` / ``unwarned`` in ``tool_changes``) -> chart name ->
    SVG, two per machine in ``machines`` order that has history: ``tool-life-<id>``, ``faults-<id>``."""
    out: dict[str, str] = {}
    for machine in machines:
        m = report.get(machine)
        if m is None:
            continue
        out[f"tool-life-{machine}"] = tool_life(machine, m["tool_changes"], days)
        out[f"faults-{machine}"] = faults(machine, m["codes"], days)
    return out


def read_usage(db_path: Path, since: float) -> dict[str, dict[str, Any]]:
    """Blocking: :func:`usage_report` since ``since``, each tool rule with its ``early`` and
    ``unwarned`` counts (read from the same file's tool changes)."""
    report = usage_report(db_path, since)
    if not report:
        return report
    first = min(datetime.fromisoformat(m["period_start"].replace("Z", "+00:00")).timestamp() for m in report.values())
    db = connect_read_only(db_path)
    try:  # the changes usage_report counted: from the first period's start
        rows = db.execute(
            "SELECT machine, data FROM usage_tool_changes WHERE time >= ? ORDER BY time", (min(first, since),)
        ).fetchall()
    finally:
        db.close()
    per: dict[str, list[dict[str, Any]]] = {}
    for machine, doc in rows:
        per.setdefault(machine, []).append(json.loads(doc))
    for machine, m in report.items():
        counts = change_counts(per.get(machine, ()))
        for rule, t in m["tool_changes"].items():
            t.update(counts.get(rule, {"early": 0, "unwarned": 0}))
    return report


class UsageCharts:
    """The charts the board shows, redrawn by :meth:`run`. Call everything from the event loop."""

    def __init__(
        self,
        db_path: Path,
        machines: Callable[[], Sequence[str]],
        *,
        days: float = DAYS,
        every: float = REFRESH,
        gap: float = GAP,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._db_path = db_path
        self._machines = machines
        self.days, self._every, self._gap, self._now = days, every, gap, now
        self.svgs: dict[str, str] = {}
        self.version = 0  # bumped whenever a chart changed
        self.reads = 0  # reads of the history (for tests and the bench)
        self._poke = asyncio.Event()
        self._trouble = Trouble(log, "board: usage charts")

    def names(self) -> list[str]:
        return list(self.svgs)

    def get(self, name: str) -> str | None:
        return self.svgs.get(name)

    def poke(self, *_: object) -> None:
        """A usage event was committed: read again soon (a usage observer: cheap, never blocks)."""
        self._poke.set()

    def _draw(self, machines: Sequence[str]) -> dict[str, str]:
        report = read_usage(self._db_path, self._now() - self.days * 86400)
        return draw(report, machines, self.days)

    async def refresh(self) -> bool:
        """Read the history in a thread and redraw; True if a chart changed."""
        machines = list(self._machines())
        self.reads += 1
        try:
            svgs = await asyncio.to_thread(self._draw, machines)
        except (OSError, sqlite3.Error, ValueError, KeyError) as exc:
            self._trouble.fail(exc, "the last charts stay on the board")
            return False
        self._trouble.ok()
        if svgs == self.svgs:
            return False
        self.svgs = svgs
        self.version += 1
        return True

    async def run(self, on_change: Callable[[], None]) -> None:
        """Redraw every ``every`` seconds and after a :meth:`poke` (not sooner than ``gap`` after the
        last read); call ``on_change`` when a chart changed. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self._poke.clear()
            began = loop.time()
            if await self.refresh():
                on_change()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await self._poke.wait()
            await asyncio.sleep(max(0.0, began + self._gap - loop.time()))
