"""The one error tree of andon-agent.

Every error the agent raises on purpose derives from :class:`AndonError`. Third-party errors
(pymodbus, asyncua, httpx, sqlite3), and the Modbus readers' own ``BadReply`` (which knows no
machine), are translated at the boundary with ``raise ... from exc`` so that callers only ever
catch these::

    AndonError
    ├── ConfigError            the config file is invalid (exit status 2); fatal
    ├── DriverError            talking to a machine failed
    │   └── ConnectionLost     no connection, or it broke; retryable (reconnect with backoff)
    │       └── NoAnswer       (drivers/modbus/bus.py) one unit on a shared bus did not answer;
    │                          that machine backs off, the bus stays open for the others
    ├── OutboxError            the durable outbox could not be read or written
    └── DeliveryError          a sink could not deliver a batch
        ├── RetryLater         transient (timeout, 5xx, 408, 429): same events again later
        └── Rejected           the receiver refused the events (other 4xx): set them aside

``retryable`` says whether trying again later can help. A device that answers with an error (a
Modbus exception, a Bad OPC UA status) is not an exception: its samples come back bad-quality.
"""

from __future__ import annotations


class AndonError(Exception):
    """Base of every error the agent raises on purpose."""

    retryable: bool = False


class ConfigError(AndonError):
    """The configuration is invalid. ``str()`` is one line naming the file, key path and problem."""


class DriverError(AndonError):
    """Talking to a machine failed. ``machine`` names it."""

    def __init__(self, machine: str, message: str) -> None:
        super().__init__(f"machine {machine!r}: {message}")
        self.machine = machine


class ConnectionLost(DriverError):
    """The connection is down or broke; reconnecting may help."""

    retryable = True


class OutboxError(AndonError):
    """The durable outbox could not be read or written."""

    retryable = True


class DeliveryError(AndonError):
    """A sink could not deliver a batch."""


class RetryLater(DeliveryError):
    """Transient failure: send the same events again later (after ``retry_after`` if given)."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(DeliveryError):
    """The receiver refused the batch (a 4xx other than 408/429)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
