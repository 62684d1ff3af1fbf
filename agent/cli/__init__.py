"""The ``andon-agent`` command line: ``run``, ``check`` and ``demo`` (see CONTRACT.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import (
    CodeRule,
    Config,
    ForecastRule,
    StaleRule,
    ThresholdRule,
    ToolLifeRule,
    load_config,
)
from agent.errors import ConfigError, OutboxError
from agent.sinks.registry import sink_plugin
from drivers.registry import PROTOCOLS, plugin_for

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("andon")


def _config_path(arg: str | None) -> Path:
    path = arg or os.environ.get("ANDON_CONFIG")
    if not path:
        raise ConfigError("no config: pass --config PATH or set ANDON_CONFIG")
    return Path(path)


def summary(cfg: Config) -> str:
    """What ``check`` prints: machines, signals, the reads each poll makes, rules and sinks."""
    lines = [
        f"gateway {cfg.agent.gateway_id}"
        + (f" at {cfg.agent.site}" if cfg.agent.site else "")
        + f", state in {cfg.agent.state_dir}"
    ]
    for m in cfg.machines:
        lines += plugin_for(m.protocol).describe(m, cfg.machines)
    for r in cfg.rules:
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
        lines.append(f"rule {r.id}: {r.kind} on {r.machine}/{r.signal}, {detail}")
    if not cfg.rules:
        lines.append("no rules: only the machines' offline alerts will be raised")
    for sink in cfg.sinks:
        lines.append(f"sink {sink.id}: {sink_plugin(sink.kind).describe(sink)}")
    if not cfg.sinks:
        lines.append("no sinks: events are kept in the outbox only")
    return "\n".join(lines)


async def _run(cfg: Config, path: Path) -> None:
    from agent.ops.notify import Notifier
    from agent.pipeline.supervisor import Agent

    stop = asyncio.Event()
    notifier = Notifier.from_env()
    agent = Agent(cfg, config_path=path, notifier=notifier)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    try:
        await agent.run(stop)
    finally:
        notifier.close()


def _check_connect(cfg: Config) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="andon-agent", description="Edge andon agent: PLC signals -> alerts upstream."
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("ANDON_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the agent until SIGTERM/SIGINT"), ("check", "validate a config and show the plan")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", help="config file (default: $ANDON_CONFIG)")
        if name == "check":
            p.add_argument(
                "--connect",
                action="store_true",
                help=f"also connect to each {' and '.join(p.title for p in PROTOCOLS if p.probe)} machine and "
                "show every signal's data type and value (exit 1 if one does not resolve or cannot be used)",
            )
    demo = sub.add_parser("demo", help="a simulated machine, the agent and a local receiver, alerts shown live")
    demo.add_argument("--speed", type=float, default=1.0, help="run the simulated machine this many times faster")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    from agent.cli.outbox import add_outbox_parser, run_outbox

    add_outbox_parser(sub)
    args = parser.parse_args(argv)

    from agent.ops.logs import setup_logging

    setup_logging(args.log_level, args.log_json)
    if args.command == "demo":
        from agent.demo.runner import run_demo

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_demo(speed=args.speed, duration=args.duration))
        return EXIT_OK
    try:
        path = _config_path(args.config)
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"andon-agent: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(summary(cfg))
        if args.connect:
            return _check_connect(cfg)
        print("config OK")
        return EXIT_OK
    if args.command == "outbox":
        return run_outbox(args, cfg)
    try:
        asyncio.run(_run(cfg, path))
    except ConfigError as exc:  # e.g. a token variable that is not set
        print(f"andon-agent: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, OutboxError) as exc:  # e.g. a state_dir the agent may not write: say so, no traceback
        log.error("cannot run: %s", exc)
        return EXIT_FATAL
    except Exception:
        log.exception("fatal error")
        return EXIT_FATAL
    return EXIT_OK
