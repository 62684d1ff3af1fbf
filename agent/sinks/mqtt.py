"""The ``mqtt`` sink: every event to the fleet's broker (QoS 1), retained alert state, a status topic.

Topics, under the sink's ``topic`` (``andon/{site}/{gateway}``, or ``andon/{gateway}`` without a site):

    <topic>/events/<subject>          every event, QoS 1, not retained; subject-less: <topic>/events/_gateway
    <topic>/alerts/<machine>/<rule>   retained: the alert's latest raised/updated event; cleared: deleted
    <topic>/status                    retained: {"online": true, ...} when connected; the will {"online": false}

Each part taken from a name (site, gateway, each level of a subject) is made safe for a topic level by
:func:`topic_level`. The payload is the event's CloudEvents JSON as the outbox holds it (structured
mode), with the MQTT 5 content type ``application/cloudevents+json``.

Acceptance. An event is accepted when the broker has acknowledged each of its messages (PUBACK with a
success reason code); until then it stays in the outbox. :meth:`MqttSink.send` keeps up to ``in_flight``
messages in flight (never more than the broker's Receive Maximum) and reads the PUBACKs oldest first,
so a batch that breaks off says how many of its first events were accepted
(``RetryLater.accepted``); the rest go again, with the same ids, on the next connection.

The connection is the sink's own background task (entered with ``async with``): it connects, publishes
the birth message, and when the connection ends reconnects with capped exponential backoff and jitter,
forever. A clean stop (``__aexit__``) publishes ``{"online": false}`` itself before disconnecting.
aiomqtt and paho are imported only when the sink is entered (:mod:`agent.sinks.mqttlink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import random
import ssl
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_random_exponential

from agent.config.base import Duration, KeyProblem, read_secret
from agent.errors import ConfigError, Rejected, RetryLater
from agent.model import StoredEvent
from agent.sinks.base import Origin, Secrets, Sink, SinkConfigBase, SinkPlugin, secret_source

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from agent.sinks.mqttlink import Link

    InFlight = deque[tuple[int, asyncio.Future[ReasonCode | None], float, str]]  # event index, PUBACK, deadline, topic

log = logging.getLogger("andon.mqtt")

CONTENT_TYPE = "application/cloudevents+json"
ALERT_PREFIX = "andon.alert."
RETAINED_TYPES = frozenset({"andon.alert.raised", "andon.alert.updated"})
CLEARED_TYPE = "andon.alert.cleared"
GATEWAY_SUBJECT = "_gateway"
ONLINE_FALSE = b'{"online": false}'
STOP_WAIT = 2.0  # a clean stop: the offline status and the DISCONNECT take at most this long
STABLE_AFTER = 10.0  # a connection that lasted this long was good: the next reconnect starts without backoff
RECONNECT_SPREAD = 2.0  # after losing a good connection, reconnect after a random pause up to this
PAYLOAD_FORMAT_INVALID = 0x99  # the one PUBACK refusal that is about the event, not the gateway's rights
TOPIC_NAME_INVALID = 0x90
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_PLACEHOLDERS = frozenset({"site", "gateway"})


# -- config -------------------------------------------------------------------------------------


class MqttSinkConfig(SinkConfigBase):
    """``[[sinks]] kind = "mqtt"``: see the README's MQTT section. ``timeout`` bounds connecting and
    each PUBACK; ``retry_max`` caps the reconnect backoff."""

    kind: Literal["mqtt"]
    url: str = Field(pattern=r"^mqtts?://")  # mqtt://host[:1883] or mqtts://host[:8883]
    topic: str | None = None  # default "andon/{site}/{gateway}", or "andon/{gateway}" without a site
    client_id: str | None = Field(default=None, min_length=1, max_length=256)  # default "andon-<gateway_id>"
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = None  # the password from this environment variable ...
    password_file: Path | None = None  # ... or from this file
    ca_file: Path | None = None  # trust this CA (PEM) instead of the system store
    cert_file: Path | None = None  # TLS client certificate (PEM) ...
    key_file: Path | None = None  # ... and its key (default: in cert_file)
    protocol: Literal["5", "3.1.1"] = "5"  # MQTT version; 3.1.1 cannot tell a refused publish from an accepted one
    in_flight: int = Field(default=64, ge=1, le=65535)  # QoS 1 messages awaiting PUBACK (capped by the broker)
    keepalive: Duration = Field(default=30.0, ge=5, le=65535)  # the broker declares the gateway gone after 1.5x

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        split_url(url)
        return url

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str | None) -> str | None:
        if topic is not None:
            check_topic_template(topic)
        return topic

    @model_validator(mode="after")
    def _check(self) -> MqttSinkConfig:
        if self.password_env and self.password_file:
            raise KeyProblem("password_file", "set at most one of `password_env` and `password_file`")
        if (self.password_env or self.password_file) and not self.username:
            raise KeyProblem("username", "a password (`password_env` or `password_file`) needs `username`")
        secure = self.url.startswith("mqtts://")
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not secure:
                raise KeyProblem(key, f"`{key}` needs TLS: use an mqtts:// url")
        if self.key_file is not None and self.cert_file is None:
            raise KeyProblem("key_file", "`key_file` needs `cert_file`")
        return self


def split_url(url: str) -> tuple[str, int, bool]:
    """``mqtt[s]://host[:port]`` -> (host, port, tls). ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: the scheme must be mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("no user or password in the url: use `username` and `password_env` or `password_file`")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: only mqtt[s]://host[:port], without a path or query")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: the host is missing")
    return parts.hostname, port, parts.scheme == "mqtts"


def check_topic_template(template: str) -> None:
    """A topic may use ``{site}`` and ``{gateway}``; it must be a valid, wildcard-free topic name."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc}") from None
    unknown = fields - _PLACEHOLDERS
    if unknown:
        raise ValueError(f"{template!r}: unknown placeholder {{{sorted(unknown)[0]}}} (use {{site}} and {{gateway}})")
    text = template.format(site="s", gateway="g")
    if any(c in text for c in "+#\x00"):
        raise ValueError(f"{template!r}: a topic name cannot contain the wildcards + or #")
    if text.startswith("$"):
        raise ValueError(f"{template!r}: topics starting with $ belong to the broker")
    if not text or text.startswith("/") or text.endswith("/") or "//" in text:
        raise ValueError(f"{template!r}: no empty topic levels (a leading, trailing or double /)")


# -- topics and messages (pure) -----------------------------------------------------------------

_SAFE_MARKS = "%+#/"  # % first: it introduces the escapes


def topic_level(text: str) -> str:
    """One name made safe as one topic level: ``%``, ``+``, ``#``, ``/``, control characters and a
    leading ``$`` are percent-encoded (UTF-8, ``%2B``); an empty name becomes ``_``. Ids from the
    config (``[A-Za-z0-9_.:-]``) come out unchanged; the mapping is reversible (percent-decoding)."""
    if not text:
        return "_"
    out = []
    for i, c in enumerate(text):
        if c in _SAFE_MARKS or ord(c) < 0x20 or ord(c) == 0x7F or (c == "$" and i == 0):
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def subject_topic(subject: str | None) -> str:
    """A subject's levels (``press-1/tool1-wear`` stays two levels), each made safe; none: ``_gateway``."""
    if not subject:
        return GATEWAY_SUBJECT
    return "/".join(topic_level(level) for level in subject.split("/"))


def base_topic(template: str | None, gateway: str, site: str | None) -> str:
    """The sink's topic with ``{site}`` and ``{gateway}`` filled in (each made safe as one level)."""
    if template is None:
        template = "andon/{site}/{gateway}" if site else "andon/{gateway}"
    if site is None and "{site}" in template:
        raise ValueError("uses {site} but [agent] site is not set")
    return template.format(gateway=topic_level(gateway), site=topic_level(site or ""))


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


def messages_for(
    base: str, event_type: str | None, subject: str | None, body: bytes, where: str | None = None
) -> tuple[Message, ...]:
    """The messages that carry one event: always its event message; for an alert's raised or updated
    event also its retained state, for a cleared one the empty retained message that deletes it.
    ``where``: ``subject_topic(subject)`` if the caller has it already."""
    if where is None:
        where = subject_topic(subject)
    event = Message(f"{base}/events/{where}", body, retain=False)
    if event_type in RETAINED_TYPES and subject:
        return event, Message(f"{base}/alerts/{where}", body, retain=True)
    if event_type == CLEARED_TYPE and subject:
        return event, Message(f"{base}/alerts/{where}", b"", retain=True)
    return (event,)


@dataclass(frozen=True, slots=True)
class Plan:
    """The messages of one batch, per event. ``deferred[i] = j``: event ``i`` is an alert's raised,
    updated or cleared event whose retained state is written by a later event ``j`` of the same alert
    in the batch (the alert's last one), so a backlog writes each alert's state once per batch."""

    messages: list[tuple[Message, ...]]
    deferred: dict[int, int]

    def complete(self, failed: int) -> int:
        """How many of the first events are accepted when event ``failed`` is the first whose messages
        were not all acknowledged: an event whose state rides on ``failed`` or a later one is not."""
        return min([failed, *(i for i, j in self.deferred.items() if i < failed <= j)])


def plan_batch(base: str, events: Sequence[tuple[str | None, str | None, bytes, str]]) -> Plan:
    """(type, subject, body, subject topic) of each event, oldest first -> the batch's :class:`Plan`."""
    last: dict[str, int] = {}
    for i, (kind, subject, _, where) in enumerate(events):
        if subject and (kind in RETAINED_TYPES or kind == CLEARED_TYPE):
            last[where] = i
    messages: list[tuple[Message, ...]] = []
    deferred: dict[int, int] = {}
    for i, (kind, subject, body, where) in enumerate(events):
        msgs = messages_for(base, kind, subject, body, where)
        if len(msgs) == 2 and last[where] != i:
            deferred[i] = last[where]
            msgs = msgs[:1]
        messages.append(msgs)
    return Plan(messages, deferred)


def event_meta(body: bytes) -> tuple[str | None, str | None]:
    """(type, subject) of a CloudEvent's JSON; (None, None) for a body that is not a JSON object."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    kind, subject = doc.get("type"), doc.get("subject")
    return (kind if isinstance(kind, str) else None), (subject if isinstance(subject, str) else None)


def birth(gateway: str, site: str | None, client_id: str, now: float, version: str | None) -> bytes:
    """The retained status message published once connected."""
    since = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    doc = {"online": True, "gateway": gateway, "site": site, "client_id": client_id, "since": since}
    return json.dumps(doc | {"version": version}).encode()


def agent_version() -> str | None:
    """The installed andon-agent's version, for the status message (None when not installed)."""
    try:
        return importlib.metadata.version("andon-agent")
    except importlib.metadata.PackageNotFoundError:
        return None


# -- secrets and TLS (read at start) ------------------------------------------------------------


def read_password(cfg: MqttSinkConfig, index: int) -> str | None:
    """The password from the environment or a file (spaces kept, line ends not), never from the config."""
    try:
        return read_secret("password", cfg.password_env, cfg.password_file, strip="\r\n")
    except KeyProblem as exc:
        raise ConfigError(f"sinks[{index}].{exc.key}: {exc}") from None


def tls_context(cfg: MqttSinkConfig, index: int | str) -> ssl.SSLContext | None:
    """Verification on (the system store, or ``ca_file``), with the client certificate if configured.
    A file that cannot be loaded is a ConfigError naming ``sinks[index].<key>`` (``index`` may be the
    sink's id instead)."""
    if not cfg.url.startswith("mqtts://"):
        return None
    key = "ca_file"
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.cert_file is not None:
            key = "cert_file"
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        where = f"sinks[{index}]" if isinstance(index, int) else f"sink {index}"
        raise ConfigError(f"{where}.{key}: cannot load it: {exc.strerror or exc}") from None
    return ctx


# -- the sink -----------------------------------------------------------------------------------


class _ShortLived(RetryLater):
    """The connection ended before it was stable: reconnect with backoff."""


@dataclass(frozen=True, slots=True)
class _Connected:
    link: Link
    window: int  # messages in flight at most: in_flight, capped by the broker's Receive Maximum


class MqttSink:
    """The ``mqtt`` sink. Enter it (``async with``) to connect; :meth:`send` as :class:`agent.sinks.Sink`.

    Caller guarantees: :meth:`send` only while entered, never two at once, events oldest first.
    """

    def __init__(
        self,
        cfg: MqttSinkConfig,
        *,
        gateway: str,
        site: str | None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.id = cfg.id
        self.url = cfg.url
        self.timeout = cfg.timeout
        self._cfg = cfg
        self._host, self._port, _ = split_url(cfg.url)
        self.topic = base_topic(cfg.topic, gateway, site)
        self.status_topic = f"{self.topic}/status"
        self.client_id = cfg.client_id or f"andon-{gateway}"
        self._gateway, self._site = gateway, site
        self._version = agent_version()
        self._password = password
        self._tls = tls
        self._properties: Properties | None = None
        self._where: dict[str | None, str] = {}  # subject -> its topic levels (few subjects, many events)
        self._connected: _Connected | None = None
        self._link: Link | None = None  # the connection being made or used
        self._up = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.last_error: str | None = None
        self.connections = 0  # successful connections so far

    def __repr__(self) -> str:  # never shows the password
        return f"MqttSink(id={self.id!r}, url={self.url!r}, topic={self.topic!r})"

    @property
    def connected(self) -> bool:
        return self._connected is not None

    async def __aenter__(self) -> MqttSink:
        self._task = asyncio.create_task(self._keep_connected(), name=f"mqtt:{self.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Clean stop, within about :data:`STOP_WAIT`: ``{"online": false}`` on the status topic, then
        disconnect. Not connected (connecting, or waiting to reconnect): stop at once."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        if self._connected is None:
            self._end(task)
        _, late = await asyncio.wait({task}, timeout=STOP_WAIT + 1.0)
        if late:
            self._end(task)
            await asyncio.wait({task}, timeout=1.0)

    def _end(self, task: asyncio.Task[None]) -> None:
        if self._link is not None:
            self._link.abort()  # so that leaving the link does not wait for a broker that does not answer
        task.cancel()

    async def wait_connected(self, within: float) -> None:
        """Wait until the sink is connected (for callers that want to know, e.g. tests)."""
        async with asyncio.timeout(within):
            await self._up.wait()

    # -- sending ------------------------------------------------------------------------------

    async def send(self, events: Sequence[StoredEvent]) -> None:
        conn = await self._ready()
        plan = plan_batch(self.topic, [self._meta(e) for e in events])
        try:
            await self._publish(conn, events, plan)
        except RetryLater as exc:
            exc.accepted = plan.complete(exc.accepted)
            raise

    async def _publish(self, conn: _Connected, events: Sequence[StoredEvent], plan: Plan) -> None:
        """Publish the plan's messages in order, at most ``conn.window`` in flight; raises at the first
        message not acknowledged, with ``accepted`` = the index of its event."""
        loop = asyncio.get_running_loop()
        inflight: InFlight = deque()
        for index, msgs in enumerate(plan.messages):
            for msg in msgs:
                while len(inflight) >= conn.window:
                    await self._settle(conn, *inflight.popleft())
                try:
                    props = self._properties if msg.payload else None
                    fut = conn.link.publish_qos1(msg.topic, msg.payload, retain=msg.retain, properties=props)
                except ValueError as exc:  # a topic MQTT cannot carry: this event can never be published
                    await self._drain(conn, inflight)
                    raise Rejected(f"event {events[index].id}: {exc}", TOPIC_NAME_INVALID, accepted=index) from exc
                except RetryLater as exc:  # the connection is gone
                    await self._drain(conn, inflight)
                    exc.accepted = index
                    raise
                inflight.append((index, fut, loop.time() + self.timeout, msg.topic))
        await self._drain(conn, inflight)

    def _meta(self, event: StoredEvent) -> tuple[str | None, str | None, bytes, str]:
        kind, subject = (event.type, event.subject) if event.type else event_meta(event.body)
        return kind, subject, event.body, self._subject_topic(subject)

    def _subject_topic(self, subject: str | None) -> str:
        where = self._where.get(subject)
        if where is None:
            if len(self._where) >= 10_000:  # bounded: a flood of distinct subjects costs only speed
                self._where.clear()
            where = self._where[subject] = subject_topic(subject)
        return where

    async def _drain(self, conn: _Connected, inflight: InFlight) -> None:
        while inflight:
            await self._settle(conn, *inflight.popleft())

    async def _settle(
        self, conn: _Connected, index: int, fut: asyncio.Future[ReasonCode | None], deadline: float, topic: str
    ) -> None:
        """Wait for one PUBACK, oldest first; raise saying that the first ``index`` events were accepted."""
        if not fut.done():
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
            except TimeoutError:
                conn.link.abort()  # a broker that holds a PUBACK this long is stuck: start again
                raise RetryLater(
                    f"no PUBACK from {self.url} within {self.timeout:g}s; reconnecting", accepted=index
                ) from None
        code = fut.result()
        if code is None:
            raise RetryLater(f"connection to {self.url} lost before the broker acknowledged", accepted=index)
        if code.is_failure:
            text = f"the broker refused the message on {topic}: {code} (0x{code.value:02X})"
            if code.value == PAYLOAD_FORMAT_INVALID:
                raise Rejected(text, code.value, accepted=index)
            raise RetryLater(f"{text}; check the broker's access rules for client {self.client_id}", accepted=index)

    async def _ready(self) -> _Connected:
        if self._task is None:
            raise RuntimeError(f"{self!r} is not entered")
        if self._connected is None:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._up.wait()
            except TimeoutError:
                why = f" ({self.last_error})" if self.last_error else ""
                raise RetryLater(f"not connected to {self.url}{why}") from None
        if self._connected is None:
            raise RetryLater(f"connection to {self.url} lost")
        return self._connected

    # -- the connection -----------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """Connect, and reconnect whenever the connection ends, until the clean stop.

        Full jitter, so that a fleet does not come back at once: a connection that ended after being
        stable is followed by a random pause of up to :data:`RECONNECT_SPREAD` (capped by
        ``retry_max``), failed attempts by random pauses up to a cap that doubles to ``retry_max``.
        """
        first = True
        while not self._stopping.is_set():
            if not first:
                await self._sleep(random.uniform(0, min(RECONNECT_SPREAD, self._cfg.retry_max)))
            first = False
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(Exception),  # whatever broke, the sink must come back
                    wait=wait_random_exponential(multiplier=0.5, max=self._cfg.retry_max),
                    stop=lambda _: self._stopping.is_set(),
                    sleep=self._sleep,
                    before_sleep=self._before_sleep,
                ):
                    with attempt:
                        await self._session()
            except RetryError:
                return

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.last_error = str(exc) or type(exc).__name__
        if not self._failing:  # once at ERROR, then quietly until it recovers
            self._failing = True
            log.error(
                "sink %s: no connection to %s (%s); reconnecting with backoff, events wait in the outbox",
                self.id,
                self.url,
                self.last_error,
                exc_info=not isinstance(exc, RetryLater | OSError),  # a surprise: show where
            )
        else:
            wait = state.next_action.sleep if state.next_action else 0.0
            log.debug("sink %s: reconnect %d in %.1fs (%s)", self.id, state.attempt_number, wait, self.last_error)

    async def _session(self) -> None:
        """One connection, from connect to its end. Returns when it ended after being stable or for the
        clean stop; raises when it could not connect or ended early."""
        self._link = link = self._new_link()
        async with link:
            window = min(self._cfg.in_flight, link.receive_maximum or self._cfg.in_flight)
            conn = _Connected(link, window)
            status = birth(self._gateway, self._site, self.client_id, time.time(), self._version)
            await self._publish_status(conn, status, self.timeout)
            started = time.monotonic()
            self._went_up(conn)
            ended = asyncio.ensure_future(link.closed())
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._connected = None
                self._up.clear()
                stop.cancel()
                ended.cancel()
                link.lost()
            if not ended.cancelled() and ended.done():
                self.last_error = f"connection lost: {ended.result()}"
            elif stop.done():
                await self._go_offline(conn)
                return
        log.warning("sink %s: %s; reconnecting", self.id, self.last_error)
        if time.monotonic() - started < STABLE_AFTER:
            raise _ShortLived(self.last_error or "connection lost")

    def _new_link(self) -> Link:
        from agent.sinks import mqttlink  # aiomqtt and paho only once an mqtt sink connects

        if self._cfg.protocol == "5" and self._properties is None:
            self._properties = mqttlink.content_type(CONTENT_TYPE)
        return mqttlink.connect(
            self._host,
            self._port,
            client_id=self.client_id,
            protocol=self._cfg.protocol,
            will=(self.status_topic, ONLINE_FALSE),
            username=self._cfg.username,
            password=self._password,
            tls=self._tls,
            timeout=self.timeout,
            keepalive=int(self._cfg.keepalive),
        )

    def _went_up(self, conn: _Connected) -> None:
        self._connected = conn
        self._up.set()
        self.connections += 1
        again = " again" if self._failing or self.connections > 1 else ""
        self._failing = False
        self.last_error = None
        log.info(
            "sink %s: connected%s to %s as %s (MQTT %s, at most %d message(s) in flight), topic %s",
            self.id,
            again,
            self.url,
            self.client_id,
            self._cfg.protocol,
            conn.window,
            self.topic,
        )

    async def _publish_status(self, conn: _Connected, payload: bytes, within: float) -> None:
        fut = conn.link.publish_qos1(self.status_topic, payload, retain=True, properties=None)
        await self._settle(conn, 0, fut, asyncio.get_running_loop().time() + within, self.status_topic)

    async def _go_offline(self, conn: _Connected) -> None:
        """The clean stop's ``{"online": false}``; if the broker does not take it, the will says it."""
        try:
            await self._publish_status(conn, ONLINE_FALSE, min(self.timeout, STOP_WAIT))
        except (RetryLater, Rejected) as exc:
            log.warning("sink %s: could not publish the offline status (%s); the will says it", self.id, exc)
            conn.link.abort()


# -- the plugin ---------------------------------------------------------------------------------


def _secrets(cfg: MqttSinkConfig, index: int) -> Secrets:
    """The password; the TLS files are loaded too, so that one that cannot be is an error before start."""
    tls_context(cfg, index)
    password = read_password(cfg, index)
    return {"password": password} if password else {}


@contextlib.asynccontextmanager
async def open_sink(cfg: MqttSinkConfig, secrets: Secrets, origin: Origin) -> AsyncIterator[Sink]:
    """The sink, connecting in the background from now on; leaving it is the clean stop."""
    tls = tls_context(cfg, cfg.id)  # loaded at start already (_secrets); a file changed since is named
    sink = MqttSink(cfg, gateway=origin.gateway, site=origin.site, password=secrets.get("password"), tls=tls)
    async with sink:
        yield sink


def describe(cfg: MqttSinkConfig) -> str:
    """``check``'s line: the broker, the topic template and where the password comes from."""
    topic = cfg.topic or "andon/[{site}/]{gateway}"
    password = secret_source("password", cfg.password_env, cfg.password_file)
    return f"mqtt {cfg.url} (MQTT {cfg.protocol}, QoS 1), topic {topic}{password}"


def cross_check(cfg: MqttSinkConfig, origin: Origin) -> list[tuple[str, str]]:
    try:
        base_topic(cfg.topic, origin.gateway, origin.site)
    except ValueError as exc:
        return [("topic", str(exc))]
    return []


PLUGIN = SinkPlugin(
    kind="mqtt", config=MqttSinkConfig, secrets=_secrets, open=open_sink, describe=describe, cross_check=cross_check
)
