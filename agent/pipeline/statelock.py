"""Who owns a ``state_dir``: an exclusive ``flock`` on ``<state_dir>/agent.lock``.

The running agent holds it for its whole life; ``andon-agent send-test`` holds it while it delivers
by itself (when no agent runs). So the two never work on one outbox at once: ``send-test`` that
finds the lock taken asks the running agent instead (:mod:`agent.ops.control`), and an agent that
starts while ``send-test`` delivers waits for it (seconds; logged). The file says who holds it
(``pid 1234 agent``), for messages. The kernel drops the lock when its holder dies, however it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

log = logging.getLogger("andon.runtime")

LOCK_FILE = "agent.lock"
WAIT_STEP = 0.2  # seconds between two tries while another process holds the lock


class StateLock:
    """``StateLock(state_dir, "agent")``: :meth:`try_acquire` or ``await`` :meth:`acquire`, then
    :meth:`release` (or use it as a context manager after acquiring). Not reentrant."""

    def __init__(self, state_dir: Path, role: str) -> None:
        self.path = state_dir / LOCK_FILE
        self._role = role
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (``pid 1234 agent``), or "another process"."""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = self.path.read_text(encoding="utf-8").strip()
            if text:
                return text
        return "another process"

    def try_acquire(self) -> bool:
        """Take the lock if it is free. Raises OSError if the file cannot be opened."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} {self._role}\n".encode())
        self._fd = fd
        return True

    async def acquire(self) -> None:
        """Take the lock, waiting (and saying so once) while another process holds it."""
        if self.try_acquire():
            return
        log.warning("%s is held by %s: waiting until it lets go of %s", self.path, self.holder(), self.path.parent)
        # Polled: another process lets go, nothing in this one can signal it (a thread blocked in
        # flock could not be cancelled by a stop).
        while not self.try_acquire():  # noqa: ASYNC110
            await asyncio.sleep(WAIT_STEP)
        log.info("%s: taken", self.path)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
