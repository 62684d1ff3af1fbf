"""systemd's notify protocol: READY, STATUS, STOPPING, RELOADING and the watchdog, without a dependency.

With ``Type=notify`` systemd waits for ``READY=1``; with ``WatchdogSec=`` it expects ``WATCHDOG=1``
at least that often and restarts the service otherwise. The pings come from a task on the event
loop itself, so a blocked or stuck loop stops them and systemd restarts the agent. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("andon.notify")


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET``. Built from the environment by :meth:`from_env`."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self.watchdog_interval = watchdog_usec / 1e6 / 2 if watchdog_usec else None  # ping at half the timeout
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog = int(usec) if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> None:
        """``send(READY="1", STATUS="...")``; errors are logged, never raised (systemd may be restarting)."""
        if self._sock is None or self._address is None:
            return
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, address)
        except OSError as exc:
            log.debug("notify: %s", exc)

    async def watchdog(self) -> None:
        """Ping the watchdog from the event loop forever (returns at once when there is none)."""
        if self.watchdog_interval is None or self._sock is None:
            return
        while True:
            self.send(WATCHDOG="1")
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
