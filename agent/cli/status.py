"""``andon-agent status [--config PATH]``: the running agent's ``/status`` as a readable table.

It asks the agent on ``[status] listen`` (a listener on all interfaces is asked on loopback), and
prints the machines with their last good read, the active alerts, the outbox and each sink with what
waits for it and its last error. :func:`render` is pure (a table test covers it). Exit status: 0 the
agent answered (healthy or not: the table says); 1 it did not (the message names the address);
2 invalid config.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from agent.cli.common import EXIT_FATAL, EXIT_OK, add_config_option, config_error, read_config
from agent.errors import ConfigError

TIMEOUT = 5.0
MESSAGE_WIDTH = 72  # an alert's message is cut to this in the table (the JSON has it whole)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("status", help="the running agent's status as a table")
    add_config_option(p)
    p.add_argument("--json", action="store_true", help="print the /status JSON as it came")
    return p


def status_url(listen: str) -> str:
    """Where to ask the agent that listens on ``listen`` ("host:port"): its wildcard as loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/status"


def run(args: argparse.Namespace) -> int:
    if args.config or os.environ.get("ANDON_CONFIG"):
        try:
            _, cfg = read_config(args)
        except ConfigError as exc:
            return config_error(exc)
        listen = cfg.status.listen
        if not listen:
            print("andon-agent: the status endpoints are off in this config ([status] listen): no agent to ask")
            return EXIT_FATAL
    else:
        listen = "127.0.0.1:9108"  # the default listener
    url = status_url(listen)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            doc = json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        print(f"andon-agent: no agent answers at {url} ({why}); is it running? (systemctl status andon-agent)")
        return EXIT_FATAL
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return EXIT_OK


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)] + [str(row[-1])]
        out.append("  ".join(cells).rstrip())
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _cut(text: str, width: int = MESSAGE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _machine_state(m: Mapping[str, Any]) -> str:
    if m.get("offline"):
        return "OFFLINE"
    if not m.get("connected"):
        return "connecting"
    return "ok" if m.get("healthy", True) else "STALE"


def render(doc: Mapping[str, Any]) -> str:
    """The ``/status`` JSON as the table ``andon-agent status`` prints."""
    site = f" at {doc['site']}" if doc.get("site") else ""
    health = "healthy" if doc.get("healthy") else "UNHEALTHY"
    lines = [f"gateway {doc.get('gateway')}{site}: {health}, up {_duration(doc.get('uptime_seconds'))}"]
    lines += [f"  problem: {p}" for p in doc.get("problems", [])]
    machines = [
        [
            m["id"],
            _machine_state(m),
            m.get("last_good_read") or "never",
            str(m.get("errors", 0)),
            ", ".join(f"{k} ({v})" for k, v in sorted(m.get("bad_signals", {}).items())) or "-",
        ]
        for m in doc.get("machines", [])
    ]
    lines += ["", *table(["MACHINE", "STATE", "LAST GOOD READ", "ERRORS", "BAD SIGNALS"], machines)]
    alerts = [[a["alert"], a["severity"], a.get("since", ""), _cut(a.get("message", ""))] for a in doc["alerts"]]
    lines.append("")
    if alerts:
        lines += table(["ACTIVE ALERT", "SEVERITY", "SINCE", "MESSAGE"], alerts)
    else:
        lines.append("no active alerts")
    ob = doc.get("outbox", {})
    age = ob.get("oldest_event_age_seconds")
    oldest = f", oldest waiting {_duration(age)}" if age else ""
    lines += [
        "",
        f"outbox: {ob.get('events', 0)} event(s), {_size(ob.get('bytes', 0))}, {ob.get('dropped', 0)} dropped, "
        f"{ob.get('dead_letters', 0)} dead letter(s){oldest}" + (", DISK FULL" if ob.get("disk_full") else ""),
    ]
    sinks = [
        [
            s["id"],
            "up" if s.get("up") else "FAILING",
            str(s.get("pending", 0)),
            str(s.get("delivered", 0)),
            s.get("last_error") or "-",
        ]
        for s in doc.get("sinks", [])
    ]
    if sinks:
        lines += table(["SINK", "STATE", "WAITING", "DELIVERED", "LAST ERROR"], sinks)
    else:
        lines.append("no sinks")
    return "\n".join(lines)
