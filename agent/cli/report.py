"""``andon-agent report``: what the maker learns, from the gateway's own history, as tables or JSON.

Per machine over the last ``--days`` (whole periods, the one under way included): tool life achieved
per tool, faults by code (most frequent first), alerts per rule and time online, offline and not
watched. ``--json`` prints one object with an object per machine holding the usage summary's fields
(:func:`agent.pipeline.usagereport.usage_report`). It reads the outbox file read-only, so it is safe
while the agent runs. :func:`render` is pure. Exit status: 0; 1 no outbox (or it cannot be read);
2 invalid config.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.cli.common import EXIT_FATAL, EXIT_OK, add_config_option, config_error, read_config
from agent.errors import ConfigError

TEXT_WIDTH = 48  # a fault code's text is cut to this in the table (the JSON has it whole)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="what the maker learns, from the local history: tool life, faults by code, alerts, time offline",
    )
    add_config_option(p)
    p.add_argument("--days", type=float, default=30.0, metavar="N", help="the last N days (default 30)")
    p.add_argument("--json", action="store_true", help="one JSON object: the summary's fields per machine")
    return p


def run(args: argparse.Namespace) -> int:
    from agent.pipeline.usagereport import usage_report

    try:
        _, cfg = read_config(args)
    except ConfigError as exc:
        return config_error(exc)
    path = cfg.agent.state_dir / "outbox.db"
    try:
        report = usage_report(path, time.time() - max(0.0, args.days) * 86400)
    except (FileNotFoundError, sqlite3.Error) as exc:
        print(f"andon-agent: cannot read the usage history in {path}: {exc}", file=sys.stderr)
        return EXIT_FATAL
    order = [m.id for m in cfg.machines if m.id in report] + sorted(set(report) - {m.id for m in cfg.machines})
    report = {m: report[m] for m in order}
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    if not cfg.usage.enabled:
        print("[usage] enabled = false: nothing is collected now; this is what was collected before.")
    elif not cfg.usage.send:
        print("[usage] send = false: this is collected on the gateway and not sent.")
    print(render(report, args.days))
    return EXIT_OK


def duration(seconds: float) -> str:
    """Seconds as a table shows them: "45 s", "12 min", "3.5 h", "4.2 d"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 4 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str, indent: str = "  ") -> list[str]:
    """Columns padded to their widest cell; ``align`` has an "l" or "r" per column."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def render_machine(m: Mapping[str, Any]) -> list[str]:
    """One machine's tables."""
    start, end = m["period_start"][:16].replace("T", " "), m["period_end"][:16].replace("T", " ")
    online, offline, unwatched = m["online_seconds"], m["offline_seconds"], m["unobserved_seconds"]
    watched = online + offline
    share = f" ({online / watched:.1%} of the watched time)" if watched else ""
    out = [
        f"{m['machine']}: {start} to {end} UTC",
        f"  online {duration(online)}{share}, offline {duration(offline)}, not watched {duration(unwatched)}",
        "",
    ]
    tools = [
        (f"{t['tool']} ({rule})", str(t["count"]), _percent(t["mean_life_fraction"]), _percent(t["min_life_fraction"]))
        for rule, t in m["tool_changes"].items()
    ]
    out += table(["tool life achieved", "changes", "mean", "least"], tools, "lrrr") if tools else ["  no tool changes"]
    out.append("")
    codes = [
        (key, str(c["count"]), duration(c["active_seconds"]), _cut(str(c["text"]))) for key, c in m["codes"].items()
    ]
    out += table(["faults by code", "count", "active", "text"], codes, "lrrl") if codes else ["  no fault codes"]
    out.append("")
    alerts = sorted(m["alerts"].items(), key=lambda kv: (-kv[1]["raised"], kv[0]))
    rows = [(rule, str(a["raised"]), duration(a["active_seconds"])) for rule, a in alerts]
    out += table(["alerts per rule", "raised", "active"], rows, "lrr") if rows else ["  no alerts"]
    return out


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 1] + "\u2026"


def render(report: Mapping[str, Mapping[str, Any]], days: float) -> str:
    """The report as the terminal shows it (pure)."""
    if not report:
        return f"No usage history in the last {days:g} days (the agent collects it while it runs, [usage] enabled)."
    lines: list[str] = []
    for m in report.values():
        lines += [*render_machine(m), ""]
    return "\n".join(lines).rstrip()
