"""``andon-agent run``: the daemon, until SIGTERM or SIGINT; SIGHUP reloads the config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from agent.cli.common import EXIT_FATAL, EXIT_OK, add_config_option, config_error, read_config
from agent.config import Config
from agent.errors import ConfigError, OutboxError

log = logging.getLogger("andon")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    add_config_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        path, cfg = read_config(args)
        asyncio.run(_run(cfg, path))
    except ConfigError as exc:  # the file, or e.g. a token variable that is not set
        return config_error(exc)
    except (OSError, OutboxError) as exc:  # e.g. a state_dir the agent may not write: say so, no traceback
        log.error("cannot run: %s", exc)
        return EXIT_FATAL
    except Exception:
        log.exception("fatal error")
        return EXIT_FATAL
    return EXIT_OK


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
