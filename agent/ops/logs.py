"""Logging setup and the "log a repeated failure once, then quietly until it recovers" helper."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class Trouble:
    """Tracks one recurring failure: ERROR the first time, DEBUG while it lasts, INFO on recovery."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.failing_since: float | None = None
        self.last_error: str | None = None

    def fail(self, error: object, hint: str = "") -> None:
        self.last_error = str(error)
        if self.failing_since is None:
            self.failing_since = time.time()
            self._log.error("%s: %s%s", self._what, error, f"; {hint}" if hint else "")
        else:
            self._log.debug("%s: still failing: %s", self._what, error)

    def ok(self, message: str = "recovered") -> None:
        if self.failing_since is not None:
            self._log.info("%s: %s after %.1fs", self._what, message, time.time() - self.failing_since)
            self.failing_since = None
            self.last_error = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The protocol libraries log every failed request at ERROR; the agent reports failures itself.
    for noisy in ("pymodbus", "asyncua", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if level.lower() != "debug" else logging.DEBUG)
