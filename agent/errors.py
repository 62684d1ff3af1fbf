"""The one error tree of andon-agent.

Every error the agent raises on purpose derives from :class:`AndonError`. Third-party errors
(pymodbus, asyncua, httpx, sqlite3), and the Modbus readers' own ``BadReply`` (which knows no
machine), are translated at the boundary with ``raise ... from exc`` so that callers only ever
catch these::

    AndonError
    ├── ConfigError            the config file is invalid (exit status 2); fatal
    │   └── NotInstalled       it needs a part this installation lacks (the OPC UA stack); exit status 2
    ├── DriverError            talking to a machine failed
    │   └── ConnectionLost     no connection, or it broke; retryable (reconnect with backoff)
    │       └── NoAnswer       (drivers/modbus/bus.py) one unit on a shared bus did not answer;
    │                          that machine backs off, the bus stays open for the others
    ├── OutboxError            the durable outbox could not be read or written
    ├── LightError             a stack light could not be written; retryable (its own backoff,
    │                          never in the alerting path)
    └── DeliveryError          a sink could not deliver a batch
        ├── RetryLater         transient (timeout, 5xx, 408, 429): same events again later
        │                      (``accepted``: how many of the batch's first events were taken)
        │   └── EndpointRefused  the endpoint or the credentials are wrong (401, 403, 404, 405,
        │                      410, 415, ... or every event refused alike): nothing is set
        │                      aside, the same events again later
        └── Rejected           the receiver refused these events (400, 422; 413: too large):
                               find them and set them aside (``accepted`` n: the first n were
                               taken and batch[n] was refused)

``retryable`` says whether trying again later can help. A device that answers with an error (a
Modbus exception, a Bad OPC UA status) is not an exception: its samples come back bad-quality.
"""

from __future__ import annotations


class AndonError(Exception):
    """Base of every error the agent raises on purpose."""

    retryable: bool = False


class ConfigError(AndonError):
    """The configuration is invalid. ``str()`` is one line naming the file, key path and problem."""


class NotInstalled(ConfigError):
    """The config needs an optional part that is not installed here, e.g. the OPC UA stack for an OPC UA
    machine. ``str()`` is one line naming the key, the machine and exactly what to install."""


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


class LightError(AndonError):
    """A stack light (``[[lights]]``) did not take a write: not reachable, or it refused. ``light`` names it."""

    retryable = True

    def __init__(self, light: str, message: str) -> None:
        super().__init__(f"stack light {light!r}: {message}")
        self.light = light


class DeliveryError(AndonError):
    """A sink could not deliver a batch."""


class RetryLater(DeliveryError):
    """Transient failure: send the same events again later (after ``retry_after`` if given).

    ``accepted``: the first ``accepted`` events of the batch were accepted before the failure (a
    sink that sends one request per event); delivery settles them and sends only the rest again.
    """

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None, *, accepted: int = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.accepted = accepted


class EndpointRefused(RetryLater):
    """The endpoint refuses every request: its URL or the gateway's credentials are wrong.

    Nothing about the events: they wait in the outbox and are sent again later. ``status`` is the
    HTTP status that says so.
    """

    def __init__(self, message: str, status: int, retry_after: float | None = None, *, accepted: int = 0) -> None:
        super().__init__(message, retry_after, accepted=accepted)
        self.status = status


class Rejected(DeliveryError):
    """The receiver refused events (400, 422), or found the batch too large (413).

    ``accepted`` None: the batch as a whole was refused and which of its events are bad is unknown
    (delivery splits it to find them). ``accepted`` n: the first n events were accepted and the
    receiver refused exactly the next one, ``batch[n]`` (a sink that sends one request per event);
    the events after it were not tried.
    """

    def __init__(self, message: str, status: int, *, accepted: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.accepted = accepted
