"""``andon-agent discover opcua ENDPOINT``: browse a server and write a config to edit.

The browsing is :func:`drivers.opcua.discover.discover` (the OPC UA driver's own connection and
security code); this module turns its findings into a TOML file (:func:`render`, pure) that
``andon-agent check`` accepts as it is: one machine with a signal per variable the rules can use
(node ids by namespace URI, display names and types as comments, units), a ``tool_life`` rule per
MachineTool ToolLife entry that has a LimitValue, an ``alarms`` rule when the server has
conditions, and a sink to fill in, commented out. Exit status 0 written, 1 cannot connect or
browse, or the OPC UA stack is not installed (one line saying why), 2 invalid options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.cli.common import EXIT_CONFIG, EXIT_FATAL, EXIT_OK
from agent.config.base import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from drivers.opcua.discover import Found

DEFAULT_MAX_NODES = 10_000
_ID = re.compile(r"[^A-Za-z0-9_.:-]+")
# option -> machine key, for the options that go into the machine as they are
_SECURITY = {
    "security_policy": "security_policy",
    "security_mode": "security_mode",
    "certificate": "certificate",
    "private_key": "private_key",
    "server_certificate": "server_certificate",
    "username": "username",
    "password_env": "password_env",
    "password_file": "password_file",
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "discover", help="browse a machine's server and write a config to edit (OPC UA)"
    )
    p.add_argument("protocol", choices=["opcua"], help="the protocol to discover (opcua)")
    p.add_argument("endpoint", help="the server's endpoint URL, opc.tcp://host:4840/")
    p.add_argument("--output", "-o", help="write the config here (default: standard output); never overwritten")
    p.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES, help="browse at most this many nodes")
    p.add_argument("--id", dest="machine_id", help="the machine's id in the config (default: from the host name)")
    p.add_argument("--timeout", default="5s", help="one request's timeout (default 5s)")
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where a generated client certificate goes")
    for option in _SECURITY:
        p.add_argument("--" + option.replace("_", "-"), dest=option, help=f"as `{option}` of an OPC UA machine")
    return p


def machine_id(endpoint: str) -> str:
    """A machine id from the endpoint's host name: ``opc.tcp://mill-2.plant:4840/`` -> ``mill-2``."""
    try:
        host = urlsplit(endpoint).hostname or ""
    except ValueError:
        host = ""
    is_address = ":" in host or host.replace(".", "").isdigit()
    name = re.sub(r"[.:]+", "-", host) if is_address else host.split(".")[0]
    return _ID.sub("-", name).strip("-_.:")[:64] or "machine"


def machine_doc(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[[machines]]`` keys the options give (signals are added by :func:`render`)."""
    doc: dict[str, Any] = {
        "id": args.machine_id or machine_id(args.endpoint),
        "protocol": "opcua",
        "endpoint": args.endpoint,
        "timeout": args.timeout,
    }
    doc |= {key: getattr(args, option) for option, key in _SECURITY.items() if getattr(args, option)}
    return doc


def value(v: Any) -> str:
    """A TOML value for a str, bool, int or float."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v)).replace("\x7f", "\\u007f")  # a JSON string is a TOML basic string, but DEL


def _comment(text: str) -> str:
    return " ".join(text.split())  # one line, whatever the server's names hold


def _table(name: str, keys: dict[str, Any], indent: str = "", comment: str = "") -> list[str]:
    lines = [f"{indent}[[{name}]]" + (f"  # {_comment(comment)}" if comment else "")]
    return lines + [f"{indent}{k} = {value(v)}" for k, v in keys.items() if v is not None]


def _header(found: Found, command: str, now: datetime) -> list[str]:
    more = "; stopped at --max-nodes: the server has more (raise --max-nodes)" if found.truncated else ""
    return [
        f"# Written by `{command}` on {now.isoformat(timespec='seconds').replace('+00:00', 'Z')}.",
        f"# {len(found.signals)} signal(s) from {found.browsed} node(s) browsed{more}; "
        f"{found.skipped} variable(s) left out (arrays, structures, not readable, no value).",
        "# Keep the signals you need, add rules and a sink, then: andon-agent check --config <this file>",
        "",
        "[agent]",
        '# gateway_id = "gw-1"                # default: the host name',
        '# site = "plant-a"',
        f"# state_dir = {value(str(DEFAULT_STATE_DIR))}",
        "",
    ]


def _rule_id(text: str, taken: set[str]) -> str:
    base = _ID.sub("-", text).strip("-_.:")[:60] or "rule"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def _rules(found: Found, machine: str) -> list[str]:
    from drivers.opcua.discover import tool_rule

    lines: list[str] = []
    taken: set[str] = set()
    for tool in found.tools:
        keys, what = tool_rule(tool)
        if keys is None:
            lines += [f"# {_comment(what)}", ""]
            continue
        rid = _rule_id(f"tool-{tool.tool}-{tool.entry}", taken)
        head = {"id": rid, "machine": machine, "signal": tool.signal, "name": f"tool {tool.tool} {tool.entry}"}
        lines += [*_table("rules", head | keys, comment=what), ""]
    if found.has_alarms:
        keys = {"id": _rule_id("alarms", taken), "machine": machine, "kind": "alarms", "source": "i=2253"}
        keys["min_severity"] = 1
        lines += [*_table("rules", keys, comment="the server has alarm conditions: each becomes its own alert"), ""]
    return lines


def render(found: Found, machine: dict[str, Any], command: str, now: datetime) -> str:
    """The config file for what ``discover`` found. Pure."""
    lines = _header(found, command, now)
    lines += _table("machines", machine)
    lines += ['poll_interval = "1s"', 'offline_after = "10s"', ""]
    for s in found.signals:
        what = f'"{s.display}": {s.type_name}' + (f", {s.unit}" if s.unit else "")
        keys = {"id": s.id, "node": s.node, "unit": s.unit or None}
        lines += [*_table("machines.signals", keys, indent="  ", comment=what), ""]
    lines += _rules(found, machine["id"])
    lines += [
        "# Where the alerts go (see the README, Sinks):",
        "# [[sinks]]",
        '# id = "upstream"',
        '# kind = "http"',
        '# url = "https://service.example.com/andon/alerts"',
        '# token_env = "ANDON_TOKEN"',
    ]
    return "\n".join(lines) + "\n"


def _summary(found: Found, seconds: float) -> str:
    from drivers.opcua.discover import tool_rule

    rules = sum(1 for t in found.tools if tool_rule(t)[0] is not None)
    alarms = ", an alarms rule" if found.has_alarms else ""
    stopped = " (stopped at --max-nodes)" if found.truncated else ""
    browsed = f"{found.browsed} node(s) browsed in {seconds:.1f} s{stopped}"
    return f"{len(found.signals)} signal(s), {rules} tool_life rule(s){alarms}; {browsed}"


def _machine(doc: dict[str, Any], state_dir: Path) -> Any:
    """The machine to connect as: the options checked as an OPC UA machine's keys are (ValueError)."""
    from pydantic import ValidationError

    from drivers.opcua.config import OpcuaMachine

    try:
        # A placeholder signal: the model needs one; the connection code reads only the session keys.
        m = OpcuaMachine.model_validate(doc | {"signals": [{"id": "discover", "node": "i=2258"}]})
    except ValidationError as exc:
        err = exc.errors()[0]
        problem = err.get("ctx", {}).get("error")
        key = getattr(problem, "key", None) or ".".join(str(p) for p in err["loc"]) or "options"
        raise ValueError(f"--{str(key).replace('_', '-')}: {problem or err['msg']}") from None
    m.use_state_dir(state_dir)
    return m


def _fail(text: str, status: int) -> int:
    print(f"andon-agent: discover: {text}", file=sys.stderr)
    return status


def _write(out: Path | None, text: str) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


def run(args: argparse.Namespace) -> int:
    from agent.errors import AndonError

    out = Path(args.output) if args.output else None
    if args.max_nodes < 1:
        return _fail("--max-nodes: must be at least 1", EXIT_CONFIG)
    if out is not None and out.exists():
        return _fail(f"{out} exists and is never overwritten: choose another --output or remove it", EXIT_CONFIG)
    doc = machine_doc(args)
    try:
        machine = _machine(doc, Path(args.state_dir))
    except ValueError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    from drivers.opcua import missing_stack

    if problem := missing_stack(None):  # what to install, as `check` and `run` say it
        return _fail(problem, EXIT_FATAL)
    from drivers.opcua.discover import discover

    started = time.monotonic()
    try:
        found = asyncio.run(discover(machine, args.max_nodes))
    except AndonError as exc:
        return _fail(str(exc), EXIT_FATAL)
    if not found.signals:
        return _fail(f"no variable the rules can use among the {found.browsed} node(s) of {args.endpoint}", EXIT_FATAL)
    command = f"andon-agent discover opcua {args.endpoint}"
    try:
        _write(out, render(found, doc, command, datetime.now(UTC)))
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc}", EXIT_FATAL)
    where = f"wrote {out}: " if out is not None else ""
    print(f"andon-agent: discover: {where}{_summary(found, time.monotonic() - started)}", file=sys.stderr)
    return EXIT_OK
