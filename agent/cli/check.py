"""``andon-agent check [--connect]``: validate a config and show what the agent will do with it.

The machine and sink lines come from their plugins (``describe``), ``--connect`` from the protocols'
probes: a new protocol or sink kind shows up here without a change to this module. Then what ``run``
needs from this host and user (:mod:`agent.cli.readiness`: secrets' variables and files, serial
ports), one line each.

Exit status: 0 valid (warnings allowed); 1 valid, but this user may not open a device a machine
needs (or ``--connect`` could not read every signal); 2 invalid, or a file ``run`` must read at
start cannot be read, or a machine's protocol needs software that is not installed (``run`` would
refuse to start).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from agent.cli.common import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, add_config_option, config_error, read_config
from agent.cli.readiness import NOTE_ROOT, needs_root_note, readiness
from agent.config import AlarmsRule, CodeRule, Config, ForecastRule, Rule, StaleRule, ThresholdRule, ToolLifeRule
from agent.errors import ConfigError
from agent.sinks.registry import sink_plugin
from drivers.registry import PROTOCOLS, plugin_for


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("check", help="validate a config and show the plan")
    add_config_option(p)
    probing = " and ".join(p.title for p in PROTOCOLS if p.probe)
    p.add_argument(
        "--connect",
        action="store_true",
        help=f"also connect to each {probing} machine and show every signal's data type and value "
        "(exit 1 if one does not resolve or cannot be used)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    try:
        _, cfg = read_config(args)
    except ConfigError as exc:
        return config_error(exc)
    print(summary(cfg))
    status = report_readiness(cfg)
    if status != EXIT_OK:
        return status
    if args.connect:
        return check_connect(cfg)
    print("config OK")
    return EXIT_OK


def report_readiness(cfg: Config) -> int:
    """Print what ``run`` would miss on this host; the exit status it calls for."""
    findings = readiness(cfg)
    for finding in findings:
        print(finding)
    if needs_root_note(cfg):
        print(NOTE_ROOT)
    if any(f.blocks_start for f in findings):
        print("config valid, but `run` would not start: it cannot read the file(s), or lacks the software, named above")
        return EXIT_CONFIG
    if any(f.level == "error" for f in findings):
        print("config valid, but a machine cannot be reached from this host as this user (see above)")
        return EXIT_FATAL
    return EXIT_OK


def _rule(r: Rule) -> str:
    """One rule in one line: its kind, what it watches and its limits."""
    if isinstance(r, AlarmsRule):
        notifier = "the Server object" if r.source == "i=2253" else r.source
        floor = f", OPC UA severity {r.min_severity} and over" if r.min_severity > 1 else ""
        return f"rule {r.id}: alarms of {r.machine} (every condition its own alert), events of {notifier}{floor}"
    if isinstance(r, ThresholdRule):
        levels = (("warning", r.warning), ("critical", r.critical))
        limits = [f"{name} {v:g}" for name, v in levels if v is not None]
        detail = " ".join(limits) + (f" deadband {r.deadband:g}" if r.deadband else "")
    elif isinstance(r, CodeRule):
        detail = f"severity {r.severity}, normal {r.normal}, {len(r.codes)} code(s) in the table"
    elif isinstance(r, ToolLifeRule):
        warn = f", warning {r.warning_remaining:g} before" if r.warning_remaining is not None else ""
        detail = f"counting {r.direction} to {r.end:g}{warn}"
    elif isinstance(r, ForecastRule):
        detail = f"{r.severity} when the trend of {r.window:g}s reaches {r.limit:g} within {r.horizon:g}s"
    elif isinstance(r, StaleRule):
        gate = f" while {r.only_while} is on" if r.only_while else ""
        detail = f"{r.severity} when unchanged for {r.after:g}s{gate}"
    else:
        detail = f"severity {r.severity}"
    return f"rule {r.id}: {r.kind} on {r.machine}/{r.signal}, {detail}"


def summary(cfg: Config) -> str:
    """What ``check`` prints: machines, signals, the reads each poll makes, rules and sinks."""
    site = f" at {cfg.agent.site}" if cfg.agent.site else ""
    lines = [f"gateway {cfg.agent.gateway_id}{site}, state in {cfg.agent.state_dir}"]
    for m in cfg.machines:
        lines += plugin_for(m.protocol).describe(m, cfg.machines)
    lines += [_rule(r) for r in cfg.rules] or ["no rules: only the machines' offline alerts will be raised"]
    for s in cfg.sinks:
        plugin = sink_plugin(s.kind)
        lines += [f"sink {s.id}: {plugin.describe(s)}", f"  routing: {plugin.route(s).describe()}"]
    if not cfg.sinks:
        lines.append("no sinks: events are kept in the outbox only")
    return "\n".join(lines)


def check_connect(cfg: Config) -> int:
    """``check --connect``: 0 if every signal of every machine a protocol can probe was read, 1 otherwise."""
    probes = [(p.probe, [m for m in cfg.machines if m.protocol == p.name]) for p in PROTOCOLS if p.probe]
    probes = [(probe, machines) for probe, machines in probes if machines]
    if not probes:
        titles = " or ".join(p.title for p in PROTOCOLS if p.probe)
        print(f"config OK (no {titles} machines to connect to)")
        return EXIT_OK

    async def probe_all() -> list[tuple[list[str], bool]]:
        return await asyncio.gather(*(probe.run(machines) for probe, machines in probes))

    results = asyncio.run(probe_all())
    print("\n".join(line for lines, _ in results for line in lines))
    if not all(ok for _, ok in results):
        failed = [probe.not_all_read for (probe, _), (_, ok) in zip(probes, results, strict=True) if not ok]
        print(f"config valid, but {', '.join(failed)} (see above)")
        return EXIT_FATAL
    print(f"config OK, {', '.join(probe.all_read for probe, _ in probes)}")
    return EXIT_OK
