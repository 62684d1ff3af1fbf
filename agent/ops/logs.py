"""Logging setup, and :class:`Trouble`: a repeated failure logged once, reminded now and then.

Lines go to stdout, human-readable or one JSON object each (``--log-json``); every time is UTC
with milliseconds. When stdout is the systemd journal (``$JOURNAL_STREAM`` names the device and
inode of the stream, as systemd documents for services), each line starts with the syslog
priority in angle brackets (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), which
journald strips and stores as the entry's priority: ``journalctl -p err`` then shows the errors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

REMIND_FIRST = 300.0  # seconds of failing before the first reminder ...
REMIND_MAX = 3600.0  # ... the interval then doubles up to this

# syslog priorities (sd-daemon(3)): what journald reads from a "<N>" prefix
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def utc_time(wall: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-22T06:10:02.118Z``."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (a level between two takes the more severe one)."""
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return PRIORITY[logging.DEBUG]


class Trouble:
    """Tracks one recurring failure: ERROR the first time, a reminder at ERROR now and then while it
    lasts ("still failing since <time> (<n> attempts): ..."; after :data:`REMIND_FIRST` seconds,
    then at doubling intervals up to :data:`REMIND_MAX`), DEBUG for the other attempts, and INFO on
    recovery with how long it lasted. Durations use the monotonic clock (a clock step at boot, when
    NTP sets the time, does not distort them); the "since" time shown is the wall clock's.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._what = what
        self._monotonic = monotonic
        self._wall = wall
        self.failing_since: float | None = None  # wall clock, for display
        self.last_error: str | None = None
        self.attempts = 0
        self._started = 0.0  # monotonic
        self._next_reminder = 0.0  # monotonic
        self._interval = REMIND_FIRST

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def fail(self, error: object, hint: str = "") -> None:
        self.last_error = str(error)
        self.attempts += 1
        now = self._monotonic()
        if self.failing_since is None:
            self.failing_since = self._wall()
            self._started = now
            self._interval = REMIND_FIRST
            self._next_reminder = now + self._interval
            self._log.error("%s: %s%s", self._what, error, f"; {hint}" if hint else "")
        elif now >= self._next_reminder:
            self._interval = min(self._interval * 2, REMIND_MAX)
            self._next_reminder = now + self._interval
            self._log.error(
                "%s: still failing since %s (%d attempts): %s",
                self._what,
                utc_time(self.failing_since),
                self.attempts,
                error,
            )
        else:
            self._log.debug("%s: still failing: %s", self._what, error)

    def ok(self, message: str = "recovered") -> None:
        if self.failing_since is not None:
            self._log.info(
                "%s: %s after %.1fs (%d failed attempts)",
                self._what,
                message,
                self._monotonic() - self._started,
                self.attempts,
            )
            self.failing_since = None
            self.last_error = None
            self.attempts = 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, milliseconds), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """``2026-11-22T06:10:02.118Z ERROR   andon.runtime: ...``; without the time for the journal
    (journald stamps every entry itself)."""

    def __init__(self, *, with_time: bool = True) -> None:
        super().__init__("%(levelname)-7s %(name)s: %(message)s")
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{utc_time(record.created)} {text}" if self._with_time else text


class JournalFormatter(logging.Formatter):
    """Puts the syslog priority prefix (``<3>``) before every line of what ``inner`` formats: journald
    makes each line an entry of its own, so a traceback's lines keep the record's priority too."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def is_journal(stream: IO[str], env: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is connected to the journal: ``$JOURNAL_STREAM`` ("<device>:<inode>")
    matches the stream's file. (A service whose output systemd sends to the journal gets the
    variable; a child that inherited it but writes elsewhere, e.g. into a pipe, does not match.)"""
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured by a test)
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup_logging(
    level: str = "info",
    json_format: bool = False,
    *,
    stream: IO[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> None:
    out = stream if stream is not None else sys.stdout
    journal = is_journal(out, env)
    formatter: logging.Formatter = JsonFormatter() if json_format else TextFormatter(with_time=not journal)
    if journal:
        formatter = JournalFormatter(formatter)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The protocol libraries log every failed request at ERROR; the agent reports failures itself.
    for noisy in ("pymodbus", "asyncua", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if level.lower() != "debug" else logging.DEBUG)
    # The board's web server says when it starts and stops (the agent says so itself); its errors stay.
    logging.getLogger("uvicorn").setLevel(logging.WARNING if level.lower() != "debug" else logging.DEBUG)
