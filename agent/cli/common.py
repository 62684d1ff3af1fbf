"""What the commands share: exit statuses, the ``--config`` option and loading the config it names."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Protocol

from agent.config import Config, load_config
from agent.errors import ConfigError

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2


class Command(Protocol):
    """A command module (``agent/cli/<command>.py``): ``add_parser`` adds its subparser to ``main``'s
    and returns it; ``run`` does the command and returns the exit status."""

    def add_parser(self, sub: Any) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="config file (default: $ANDON_CONFIG)")


def config_path(arg: str | None) -> Path:
    path = arg or os.environ.get("ANDON_CONFIG")
    if not path:
        raise ConfigError("no config: pass --config PATH or set ANDON_CONFIG")
    return Path(path)


def read_config(args: argparse.Namespace) -> tuple[Path, Config]:
    """The config ``--config`` (or ``$ANDON_CONFIG``) names, loaded. Raises ConfigError."""
    path = config_path(args.config)
    return path, load_config(path)


def config_error(exc: ConfigError) -> int:
    """Say what is wrong with the config on one line; the exit status for it."""
    print(f"andon-agent: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG
