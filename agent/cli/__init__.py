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
from agent.sinks.http import HttpSinkConfig
from drivers.modbus.config import ModbusMachine
from drivers.opcua.config import OpcuaMachine

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("andon")


def _config_path(arg: str | None) -> Path:
    path = arg or os.environ.get("ANDON_CONFIG")
    if not path:
        raise ConfigError("no config: pass --config PATH or set ANDON_CONFIG")
    return Path(path)


def _opcua_session(m: OpcuaMachine) -> str:
    """How the agent talks to an OPC UA machine, in one line (no protocol library needed)."""
    if m.mode == "subscribe":
        text = f"subscribe to data changes (sampling and publishing every {m.poll_interval:g}s)"
    else:
        text = f"poll: all {len(m.signals)} node(s) in one Read every {m.poll_interval:g}s"
    if m.security_policy == "None":
        text += ", no security"
    else:
        text += f", security {m.security_policy} {m.message_security_mode}"
        text += f", client certificate {m.certificate}" if m.certificate else f" (client certificate in {m.pki_dir})"
        text += f", server certificate {m.server_certificate}" if m.server_certificate else ""
    if m.username is not None:
        where = f"${m.password_env}" if m.password_env else str(m.password_file)
        text += f", user {m.username} (password from {where})"
    return text


def summary(cfg: Config) -> str:
    """What ``check`` prints: machines, signals, the reads each poll makes, rules and sinks."""
    from drivers.modbus.driver import spans_for
    from drivers.modbus.planner import plan_reads  # pure, no protocol library

    lines = [
        f"gateway {cfg.agent.gateway_id}"
        + (f" at {cfg.agent.site}" if cfg.agent.site else "")
        + f", state in {cfg.agent.state_dir}"
    ]
    for m in cfg.machines:
        if isinstance(m, ModbusMachine):
            if m.serial is not None:
                where = f"modbus rtu {m.serial} {m.baudrate} {m.parity}"
            else:
                where = f"modbus {'rtu-over-tcp' if m.framer == 'rtu' else 'tcp'} {m.host}:{m.port}"
            lines.append(
                f"machine {m.id}: {where} unit {m.unit}, poll every {m.poll_interval:g}s, "
                f"offline after {m.offline_after:g}s"
            )
            mates = [o.id for o in cfg.machines if isinstance(o, ModbusMachine) and o.bus == m.bus and o is not m]
            if mates or m.request_gap:
                shared = f", shared with {', '.join(mates)} (one request at a time)" if mates else ""
                gap = f", {m.request_gap * 1000:g}ms quiet after each request" if m.request_gap else ""
                lines.append(f"  bus {m.bus}{shared}{gap}")
            for s in m.signals:
                if s.type == "bit":
                    what = f"bit {s.bit}"
                elif s.type == "string":
                    what = f"string of {s.length} register{'s' if s.length != 1 else ''}"
                else:
                    what = s.type
                wide = s.type not in ("bool", "bit", "int16", "uint16", "string")
                ordered = s.table in ("holding", "input") and (wide or s.byte_order != "ABCD")
                extra = f" {s.byte_order}" if ordered else ""
                extra += f" x{s.scale:g}" if s.scale != 1 else ""
                extra += f" {s.offset:+g}" if s.offset else ""
                lines.append(f"  signal {s.id}: {s.table} {s.address} {what}{extra}")
            plan = plan_reads(spans_for(m).values(), max_gap=m.max_gap)
            lines.append(f"  each poll makes {len(plan)} read(s):")
            lines += [f"    {req}" for req in plan]
        elif isinstance(m, OpcuaMachine):
            lines.append(
                f"machine {m.id}: opcua {m.endpoint}, every {m.poll_interval:g}s, offline after {m.offline_after:g}s"
            )
            lines.append("  " + _opcua_session(m))
            lines += [f"  signal {s.id}: node {s.node}" for s in m.signals]
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
        assert isinstance(sink, HttpSinkConfig)  # the only kind for now
        auth = f", token from ${sink.token_env}" if sink.token_env else ""
        auth = f", token from {sink.token_file}" if sink.token_file else auth
        lines.append(f"sink {sink.id}: http POST {sink.url}{auth}")
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
    """``check --connect``: 0 if every OPC UA node resolves to a usable value, 1 otherwise."""
    machines = [m for m in cfg.machines if isinstance(m, OpcuaMachine)]
    if not machines:
        print("config OK (no OPC UA machines to connect to)")
        return EXIT_OK
    from drivers.opcua.probe import probe_all

    lines, ok = asyncio.run(probe_all(machines))
    print("\n".join(lines))
    if not ok:
        print("config valid, but not every OPC UA node can be read (see above)")
        return EXIT_FATAL
    print("config OK, every OPC UA node resolves")
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
                help="also connect to each OPC UA machine and show every node's data type and value "
                "(exit 1 if a node does not resolve or cannot be used)",
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
