"""What every sink shares: the :class:`Sink` interface, the base of its config model, its entry in
:mod:`agent.sinks.registry` (:class:`SinkPlugin`) and reading its secrets.

A sink takes batches of events from the outbox and delivers them upstream; it never holds events of
its own. A sink kind is one module, ``agent/sinks/<kind>.py``, holding its config model (a
:class:`SinkConfigBase` with ``kind: Literal["<kind>"]``), its sink class and its ``PLUGIN``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import Field

from agent.config.base import Duration, Id, KeyProblem, SeverityName, StrictModel, read_secret
from agent.errors import ConfigError, RetryLater
from agent.model import Severity, StoredEvent
from agent.sinks.routing import Route


class SendTimeout(RetryLater):
    """The upstream did not answer within the sink's timeout (it may still have taken the batch)."""


class Sink(Protocol):
    """One upstream. :meth:`send` either returns (the whole batch is accepted) or raises
    :class:`~agent.errors.RetryLater` (send the same events again later; :class:`SendTimeout` when
    the upstream did not answer in time once the request was on its way;
    :class:`~agent.errors.EndpointRefused` when the endpoint or the credentials are wrong) or
    :class:`~agent.errors.Rejected` (the receiver refuses these events, or finds the batch too
    large). Any other exception is a bug: delivery logs it and retries. Caller guarantees: no
    concurrent ``send`` calls on one sink; events are passed oldest first; ``send`` is called only
    while the sink is open (inside its plugin's ``open``).
    """

    id: str

    async def send(self, events: Sequence[StoredEvent]) -> None: ...


class SinkConfigBase(StrictModel):
    """What every ``[[sinks]]`` entry has. A sink's model adds ``kind: Literal["<kind>"]`` and its own keys."""

    id: Id
    kind: str
    timeout: Duration = Field(default=10.0, gt=0)  # one delivery request, start to end
    retry_max: Duration = Field(default=60.0, gt=0)  # cap of the retry backoff
    min_severity: SeverityName = "info"  # an alert reaches the sink from its first event at/above this
    machines: list[Id] | None = None  # the machines whose events the sink gets; default all


C = TypeVar("C", bound=SinkConfigBase)


@dataclass(frozen=True)
class Origin:
    """Where a sink's events come from, from ``[agent]``: for a sink that names the gateway outside
    the events themselves (an MQTT topic and client id, a PagerDuty dedup key)."""

    gateway: str
    site: str | None = None


Secrets = Mapping[str, str]
"""A sink's secrets by name (``{"token": ...}``), read from ``*_env`` / ``*_file`` at start and on reload."""


@dataclass(frozen=True)
class SinkPlugin(Generic[C]):
    """What the agent knows of one sink kind; :data:`agent.sinks.registry.SINKS` lists them all.

    * ``kind``: the value of ``kind`` in the config; ``config``: the sink's model.
    * ``secrets(cfg, index)``: reads the sink's secrets (:func:`sink_secret`); raises
      :class:`~agent.errors.ConfigError` naming ``sinks[index].<key>``. Called before anything
      starts, and on reload (a changed secret restarts the sink).
    * ``open(cfg, secrets, origin)``: the sink as an async context manager: entering it makes what
      the sink holds (an HTTP client, a broker connection), leaving it closes that.
    * ``describe(cfg)``: what ``check`` says of the sink after ``sink <id>:`` (no secrets).
    * ``alerts_only``: the kind takes the alert lifecycle (``andon.alert.*``) and ``andon.test``
      only (agent.sinks.routing); otherwise every event type.
    * ``cross_check(cfg, origin)``: optional; what the sink's model cannot check alone, against
      ``[agent]``, as (key, problem) pairs, the key relative to the sink (e.g. ``("topic", ...)``).
    """

    kind: str
    config: type[C]
    secrets: Callable[[C, int], Secrets]
    open: Callable[[C, Secrets, Origin], AbstractAsyncContextManager[Sink]]
    describe: Callable[[C], str]
    alerts_only: bool = False
    cross_check: Callable[[C, Origin], Sequence[tuple[str, str]]] | None = None

    def route(self, cfg: SinkConfigBase) -> Route:
        """The sink's routing (agent.sinks.routing) from its config."""
        machines = frozenset(cfg.machines) if cfg.machines is not None else None
        return Route(cfg.id, Severity.parse(cfg.min_severity), machines, self.alerts_only)


def check_http_url(url: str, secrets: str = "`token_env` or `token_file`") -> str:
    """An ``http(s)://host[:port][/path]`` URL the sink's HTTP client will take, checked when the config
    is loaded (by :func:`urllib.parse.urlsplit`, a real parser) so that ``check`` refuses what would
    fail at the first request. ValueError says what is wrong; ``secrets`` names the keys a token goes in.
    """
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError(f"{url!r}: no spaces or control characters in the url (write a space as %20)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the scheme must be http:// or https://")
    if port == 0:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"no user or password in the url: use {secrets}")
    if not parts.hostname:
        raise ValueError(f"{url!r}: the host is missing")
    return url


def sink_secret(index: int, name: str, env: str | None, file: Path | None) -> str | None:
    """The secret ``<name>_env`` / ``<name>_file`` of ``sinks[index]`` (None when neither is set).

    Raises :class:`~agent.errors.ConfigError` with one line naming the key, e.g.
    ``sinks[0].token_env: environment variable ANDON_TOKEN is not set or empty``.
    """
    try:
        return read_secret(name, env, file)
    except KeyProblem as exc:
        raise ConfigError(f"sinks[{index}].{exc.key}: {exc}") from None


def secret_source(name: str, env: str | None, file: Path | None) -> str:
    """Where a secret comes from, for ``check`` (never the secret): ``", token from $ANDON_TOKEN"``."""
    if env:
        return f", {name} from ${env}"
    if file is not None:
        return f", {name} from {file}"
    return ""
