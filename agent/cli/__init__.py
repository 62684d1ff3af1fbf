"""The ``andon-agent`` command line (see the README, "Commands"): one module per command.

::

    run.py     andon-agent run      the daemon
    check.py   andon-agent check    validate a config, show the plan; --connect reads every signal once
    outbox.py  andon-agent outbox   show the queue and dead letters; retry or purge dead letters
    demo.py    andon-agent demo     a simulated machine, the agent and a local receiver
    send_test.py  andon-agent send-test   one andon.test event through the outbox; each sink's verdict
    status.py     andon-agent status      the running agent's /status as a table
    discover.py   andon-agent discover    browse an OPC UA server, write a config to edit
    report.py     andon-agent report      what the maker learns, from the local history

Adding a command: write ``agent/cli/<command>.py`` with ``add_parser(sub)`` (adds and returns its
subparser) and ``run(args) -> int`` (the exit status), and add the module to :data:`COMMANDS`.
Command modules import what is heavy inside ``run``, so each command starts fast.
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import sys
from collections.abc import Sequence

from agent.cli import check, demo, discover, outbox, report, run, send_test, status
from agent.cli.common import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, Command

__all__ = ["COMMANDS", "EXIT_CONFIG", "EXIT_FATAL", "EXIT_OK", "main"]

COMMANDS: tuple[Command, ...] = (run, check, discover, demo, outbox, send_test, status, report)


def parser() -> argparse.ArgumentParser:
    """``andon-agent``'s options and one subcommand per module of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="andon-agent", description="Edge andon agent: PLC signals -> alerts upstream.")
    p.add_argument(
        "--log-level", default=os.environ.get("ANDON_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"]
    )
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    return p


class _NotInstalled(importlib.abc.MetaPathFinder):
    """Makes ``import`` of the named modules fail as if they were not installed (nothing enters
    ``sys.modules``, so code that looks there, like tenacity's sleep, sees them absent too)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname in self.names:
            raise ModuleNotFoundError(f"{fullname} is left out of the agent", name=fullname)
        return None


def lean_imports() -> None:
    """Keep optional parts of libraries the agent never uses out of its process.

    httpx imports its own command line when click is installed (uvicorn, which serves the board,
    brings click; a developer's environment also has pygments), and httpcore imports trio when it
    is installed (Selenium, for the board's browser tests, brings it) just to tell trio from
    asyncio. Measured in a development environment: about 7 MB of memory for nothing. Both
    libraries take the ImportError of a missing module in their stride; the agent then costs what it
    costs on a gateway, where neither is installed.
    """
    if not any(isinstance(f, _NotInstalled) for f in sys.meta_path):
        sys.meta_path.insert(0, _NotInstalled(frozenset({"httpx._main", "trio"})))


def main(argv: Sequence[str] | None = None) -> int:
    lean_imports()
    args = parser().parse_args(argv)
    from agent.ops.logs import setup_logging

    setup_logging(args.log_level, args.log_json)
    status: int = args.run(args)
    return status
