"""``andon-agent demo``: a simulated machine, the agent watching it, alerts shown as they are pushed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from agent.cli.common import EXIT_OK


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="a simulated machine, the agent and a local receiver, alerts shown live"
    )
    p.add_argument("--speed", type=float, default=1.0, help="run the simulated machine this many times faster")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    return p


def run(args: argparse.Namespace) -> int:
    from agent.demo.runner import run_demo

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(speed=args.speed, duration=args.duration))
    return EXIT_OK
