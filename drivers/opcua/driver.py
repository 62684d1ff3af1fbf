"""The OPC UA driver: one asyncua session per machine, in subscription (default) or poll mode.

``OpcuaDriver(machine)`` gives a :class:`OpcuaSubscriptionDriver` (a :class:`~drivers.base.PushDriver`)
for ``mode = "subscribe"`` and a plain polling driver for ``mode = "poll"`` (all nodes in one Read
per poll). asyncua is imported only when this module is, i.e. only when an OPC UA machine is
configured.

Recovery: asyncua's own auto-reconnect stays **off**. Every way a session can end (the socket
closes, asyncua's watchdog read of the server state fails, a subscription reports ``BadShutdown``
or another status change, no publish response (data or keep-alive) for two keep-alive periods, the
notification queue overflows) ends ``updates()`` / ``read()`` with
:class:`~agent.errors.ConnectionLost`; the agent's supervisor then opens a fresh session with capped,
jittered backoff, subscribes again and re-reads every value. Nothing is carried over from a dead
session, so there is no half-restored state that could silently stop delivering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies, uacrypto
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError

from agent.config.base import KeyProblem, read_secret
from agent.errors import ConnectionLost, DriverError
from agent.model import ConditionEvent, Sample
from drivers.opcua.config import OpcuaMachine
from drivers.opcua.values import describe, sample

log = logging.getLogger("andon.opcua")

# What talking to a server may raise (ConnectionError and TimeoutError are OSErrors too).
NETWORK_ERRORS = (TimeoutError, OSError, UaError)
SESSION_TIMEOUT_MS = 60_000  # a session left behind by a broken connection expires on the server after this
CLOSE_TIMEOUT = 2.0
INBOX_LIMIT = 10_000  # notifications waiting for the runtime; beyond this the session is dropped and re-read
POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
CERT_FILE, KEY_FILE = "client-cert.der", "client-key.pem"


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def connect_budget(m: OpcuaMachine) -> float:
    """Longest time a connect may take: a few request round trips (more with security)."""
    return m.timeout * (5 if m.security_policy != "None" else 3) + 1.0


def read_password(m: OpcuaMachine) -> str | None:
    """The password from ``password_env`` or ``password_file`` (read on every connect: rotation works).

    Only line ends are stripped: spaces may belong to a password."""
    try:
        return read_secret("password", m.password_env, m.password_file, strip="\r\n")
    except KeyProblem as exc:
        raise DriverError(m.id, f"{exc.key}: {exc}") from None


def application_uri(m: OpcuaMachine) -> str:
    """The URI of a generated client certificate (and of the session)."""
    return f"urn:{socket.gethostname()}:andon-agent:{m.id}"


async def _uri_of_certificate(path: Path) -> str | None:
    from cryptography import x509

    cert = await uacrypto.load_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uris[0]) if uris else None


def make_private_key(path: Path) -> None:
    """Write a new 2048-bit RSA key (PEM), readable by its owner only. Blocking: run it in a thread."""
    from asyncua.crypto import cert_gen

    pem = cert_gen.dump_private_key_as_pem(cert_gen.generate_private_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)  # never a half-written key under the real name


async def client_pair(client: Client, m: OpcuaMachine) -> tuple[Path, Path]:
    """The client certificate and key: the configured files, or a self-signed pair made on first start.

    Sets ``client.application_uri`` to the certificate's URI (the server checks that they match).
    """
    if m.certificate is not None and m.private_key is not None:
        for name, path in (("certificate", m.certificate), ("private_key", m.private_key)):
            if not path.is_file():
                raise DriverError(m.id, f"{name}: no such file {path}")
        try:
            uri = await _uri_of_certificate(m.certificate)
        except (OSError, ValueError) as exc:
            raise DriverError(m.id, f"certificate: cannot load {m.certificate}: {exc}") from None
        client.application_uri = uri or application_uri(m)
        return m.certificate, m.private_key
    client.application_uri = application_uri(m)
    cert, key = m.pki_dir / CERT_FILE, m.pki_dir / KEY_FILE
    new = not (cert.is_file() and key.is_file())
    try:
        if not key.is_file():  # seconds of CPU on a Pi: not on the event loop (the watchdog, the other machines)
            await asyncio.to_thread(make_private_key, key)
        await client.setup_self_signed_certificate(key, cert)  # keeps a valid pair, else (re)makes the certificate
    except (OSError, ValueError) as exc:
        raise DriverError(m.id, f"cannot create a client certificate in {m.pki_dir}: {exc}") from None
    if new:
        log.info("machine %s: made a self-signed client certificate %s (trust it on the server)", m.id, cert)
    return cert, key


async def open_client(m: OpcuaMachine, on_lost: Callable[[Exception], Any] | None = None) -> Client:
    """A connected client with the machine's security and user. Raises ConnectionLost or DriverError."""
    client = Client(m.endpoint, timeout=m.timeout, watchdog_intervall=max(1.0, m.timeout))
    client.session_timeout = SESSION_TIMEOUT_MS
    client.name = client.description = "andon-agent"
    client.product_uri = "urn:andon-agent"
    client.connection_lost_callback = on_lost
    if m.username is not None:
        client.set_user(m.username)
        client.set_password(read_password(m) or "")
    try:
        async with asyncio.timeout(connect_budget(m)):
            if m.security_policy != "None":
                cert, key = await client_pair(client, m)
                server_cert = m.server_certificate
                if server_cert is not None and not server_cert.is_file():
                    raise DriverError(m.id, f"server_certificate: no such file {server_cert}")
                await client.set_security(
                    POLICIES[m.security_policy],
                    certificate=str(cert),
                    private_key=str(key),
                    server_certificate=str(server_cert) if server_cert is not None else None,
                    mode=getattr(ua.MessageSecurityMode, m.message_security_mode),
                )
            await client.connect()
    except NETWORK_ERRORS as exc:
        _drop_socket(client)
        raise ConnectionLost(m.id, f"cannot connect to {m.endpoint}: {_why(exc)}") from exc
    except DriverError:
        _drop_socket(client)
        raise
    return client


def _drop_socket(client: Client) -> None:
    """After a failed connect: asyncua has unwound what it opened; close a socket a timeout left open."""
    try:
        client.uaclient.disconnect_socket()
    except Exception:  # best effort: the client is thrown away
        log.debug("closing the socket of a failed connect", exc_info=True)


async def close_client(client: Client) -> None:
    """Close the session (which deletes its subscriptions on the server) within a bounded time."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.disconnect()
    except (*NETWORK_ERRORS, RuntimeError):
        pass


def local_node_id(text: str, namespaces: list[str]) -> str | None:
    """``nsu=<namespace URI>;<id>`` -> ``ns=<index>;<id>`` for this server (None: it has no such namespace).

    Any other node id text is returned as it is.
    """
    if not text.startswith("nsu="):
        return text
    uri, sep, rest = text[4:].partition(";")
    if not sep or uri not in namespaces:
        return None
    return f"ns={namespaces.index(uri)};{rest}"


async def resolve_nodes(client: Client, m: OpcuaMachine) -> tuple[list[Node | None], dict[int, str]]:
    """A node per signal (None where there is none) and, for those, why (a status name).

    ``nsu=<namespace URI>;...`` node ids are resolved against the server's namespace array on every
    connect, so they keep working when a server restart or update renumbers its namespaces.
    """
    namespaces: list[str] = []
    if any(s.node.startswith("nsu=") for s in m.signals):
        async with asyncio.timeout(m.timeout + 0.5):
            namespaces = list(await client.get_namespace_array())
    nodes: list[Node | None] = []
    errors: dict[int, str] = {}
    for i, s in enumerate(m.signals):
        text = local_node_id(s.node, namespaces)
        if text is None:
            nodes.append(None)
            errors[i] = "BadNodeIdUnknown" if ";" in s.node else "BadNodeIdInvalid"
            continue
        try:
            nodes.append(client.get_node(text))
        except (UaError, ValueError):
            nodes.append(None)
            errors[i] = "BadNodeIdInvalid"
    return nodes, errors


class OpcuaDriver:
    """One OPC UA session with one server; poll mode: every node in one Read per ``read()``.

    See :class:`drivers.base.Driver`. ``OpcuaDriver(machine)`` returns an
    :class:`OpcuaSubscriptionDriver` when the machine's ``mode`` is ``"subscribe"``.
    """

    def __new__(cls, machine: OpcuaMachine) -> OpcuaDriver:
        if cls is OpcuaDriver and machine.mode == "subscribe":
            return super().__new__(OpcuaSubscriptionDriver)
        return super().__new__(cls)

    def __init__(self, machine: OpcuaMachine) -> None:
        self.machine = machine
        self._client: Client | None = None
        self._nodes: list[Node | None] = []  # per signal; None: the node id cannot be parsed
        self._lost: str | None = None  # why asyncua says the connection is gone
        self._reported: dict[str, str] = {}  # signal -> the bad status logged for it (once per change)
        self._node_errors: dict[int, str] = {}  # signal index -> why it has no node (status name)
        self._max_read = 0  # the server's MaxNodesPerRead (0: no limit)
        self._max_items = 0  # the server's MaxMonitoredItemsPerCall (0: no limit)
        self._on_loss: list[Callable[[str], None]] = []  # told at once when asyncua sees the session die

    async def __aenter__(self) -> Self:
        self._lost = None
        self._client = await open_client(self.machine, self._on_lost)
        try:
            self._nodes, self._node_errors = await resolve_nodes(self._client, self.machine)
            self._max_read, self._max_items = await self._operation_limits(self._client)
        except NETWORK_ERRORS as exc:
            await close_client(self._client)
            self._client = None
            raise ConnectionLost(self.machine.id, f"cannot read from {self.machine.endpoint}: {_why(exc)}") from exc
        return self

    async def _operation_limits(self, client: Client) -> tuple[int, int]:
        """The server's MaxNodesPerRead and MaxMonitoredItemsPerCall (0 where it sets no limit)."""
        ids = (
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        )
        async with asyncio.timeout(self.machine.timeout + 0.5):
            results = await client.read_attributes([client.get_node(ua.NodeId(ua.Int32(i))) for i in ids])
        limits = []
        for dv in results:
            status, value = status_and_value(dv)
            limits.append(value if status is None and isinstance(value, int) and value > 0 else 0)
        return limits[0], limits[1]

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    async def _on_lost(self, exc: Exception) -> None:
        """asyncua's connection_lost_callback: its watchdog or the transport saw the session die."""
        if isinstance(exc, TimeoutError):
            self._lost = "connection lost: the server stopped answering (watchdog read timed out)"
        else:
            self._lost = f"connection lost: {_why(exc)}"
        for tell in self._on_loss:
            tell(self._lost)

    def _alive(self) -> Client:
        """The client, or ConnectionLost when asyncua has noticed the session is gone."""
        client = self._client
        if client is None:
            raise ConnectionLost(self.machine.id, "not connected")
        if self._lost is not None:
            raise ConnectionLost(self.machine.id, self._lost)
        state = client.uaclient.state
        if state is not UaClientState.CONNECTED:
            raise ConnectionLost(self.machine.id, f"session {state.value}")
        return client

    @property
    def _valid(self) -> list[Node]:
        return [n for n in self._nodes if n is not None]

    async def _read_all(self, client: Client) -> list[tuple[str | None, Any]]:
        """(status name or None, value) per signal, from one Read of every valid node.

        More Reads only when the server's MaxNodesPerRead is lower than the number of nodes.
        """
        nodes = self._valid
        results: list[ua.DataValue] = []
        try:
            for chunk in _chunks(nodes, self._max_read):
                async with asyncio.timeout(self.machine.timeout + 0.5):
                    results += await client.read_attributes(chunk)
        except NETWORK_ERRORS as exc:
            raise ConnectionLost(self.machine.id, f"read failed: {_why(exc)}") from exc
        if len(results) != len(nodes):
            raise ConnectionLost(self.machine.id, f"read returned {len(results)} values for {len(nodes)} nodes")
        it = iter(results)
        out: list[tuple[str | None, Any]] = []
        for i, node in enumerate(self._nodes):
            if node is None:
                out.append((self._node_errors.get(i, "BadNodeIdInvalid"), None))
                continue
            dv = next(it)
            out.append(status_and_value(dv))
        return out

    def _samples(self, readings: list[tuple[str | None, Any]], now: float) -> list[Sample]:
        out = []
        for s, (status, value) in zip(self.machine.signals, readings, strict=True):
            smp = sample(self.machine.id, s.id, status, value, now)
            self._note(s.id, s.node, smp)
            out.append(smp)
        return out

    def _note(self, signal: str, node: str, smp: Sample) -> None:
        """Log a signal going bad (once per reason) and coming back."""
        m = self.machine.id
        if smp.good:
            if self._reported.pop(signal, None) is not None:
                log.info("machine %s: signal %s (node %s) is good again", m, signal, node)
        elif self._reported.get(signal) != smp.error:
            self._reported[signal] = smp.error or "bad"
            log.warning(
                "machine %s: signal %s (node %s): %s; its samples are bad, the other signals keep working",
                m,
                signal,
                node,
                describe(smp.error or "bad"),
            )

    async def read(self) -> list[Sample]:
        client = self._alive()
        readings = await self._read_all(client)
        return self._samples(readings, time.time())

    async def conditions(self, notifiers: Sequence[str]) -> AsyncIterator[list[ConditionEvent]]:
        """The machine's alarms (OPC UA Alarms & Conditions) from these event notifiers, as they come.

        Subscribes on this session, asks for the current conditions (ConditionRefresh) and yields
        them (between ``refresh_start`` and ``refresh_end`` markers), then every change; raises
        :class:`~agent.errors.ConnectionLost` when the session or the subscription dies. It may run
        alongside ``read()`` or ``updates()``. See :mod:`drivers.opcua.alarms`.
        """
        from drivers.opcua.alarms import condition_events

        client = self._alive()
        events = condition_events(client, self.machine, notifiers, self._alive)
        async for batch in events:
            yield batch


def _chunks(items: list[Node], size: int) -> list[list[Node]]:
    """``items`` in pieces of at most ``size`` (0: one piece); no pieces for no items."""
    if not items:
        return []
    if size <= 0:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def status_and_value(dv: ua.DataValue) -> tuple[str | None, Any]:
    """(None, value) for a good DataValue, (status name, None) for a Bad or Uncertain one."""
    status = dv.StatusCode
    if status is not None and not status.is_good():
        return status.name, None
    return None, dv.Value.Value if dv.Value is not None else None


def subscription_parameters(m: OpcuaMachine) -> ua.CreateSubscriptionParameters:
    """Publishing every poll_interval; a keep-alive every offline_after / 3 (at most 10 s) when idle."""
    period = m.poll_interval
    keepalive_s = min(max(m.offline_after / 3, period), 10.0)
    keepalive = max(1, math.ceil(keepalive_s / period))
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = period * 1000.0
    params.RequestedMaxKeepAliveCount = keepalive
    params.RequestedLifetimeCount = keepalive * 10  # the spec asks for at least 3x the keep-alive count
    params.MaxNotificationsPerPublish = 0  # no limit
    params.PublishingEnabled = True
    params.Priority = 0
    return params


def stale_limit(m: OpcuaMachine, revised: ua.CreateSubscriptionResult) -> float:
    """How long without any publish response (data or keep-alive) means the subscription is dead.

    From the server's revised values: a server with a longer minimum publishing interval, or
    another keep-alive count, must not be taken for a dead one.
    """
    interval = revised.RevisedPublishingInterval / 1000.0
    if interval > m.poll_interval * 1.01:
        log.info("machine %s: the server publishes every %gs, not every poll_interval", m.id, interval)
    return float(2 * interval * max(1, int(revised.RevisedMaxKeepAliveCount)) + m.timeout + 1.0)


class _Inbox:
    """asyncua subscription handler: notifications into one queue, in the order they came."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any, Any]] = asyncio.Queue()
        self.overflow = False

    def _put(self, item: tuple[str, Any, Any]) -> None:
        if self.overflow:
            return  # the session is being dropped anyway
        if self.queue.qsize() >= INBOX_LIMIT:
            self.overflow = True  # the session is dropped and everything re-read: nothing is silently lost
            self.queue.put_nowait(("lost", f"more than {INBOX_LIMIT} notifications waiting", None))
            return
        self.queue.put_nowait(item)

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self._put(("data", node.nodeid, data.monitored_item.Value))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self._put(("status", status.Status, None))

    def lost(self, why: str) -> None:
        self.queue.put_nowait(("lost", why, None))


class OpcuaSubscriptionDriver(OpcuaDriver):
    """Subscription mode: a :class:`~drivers.base.PushDriver`.

    ``updates()`` subscribes to data changes of every node (sampling and publishing at the
    machine's ``poll_interval``), reads every current value in one Read and yields it, then yields
    every signal's latest sample whenever notifications arrive, and at least every
    ``poll_interval`` while the session is alive (so time-based rules such as ``on_delay`` see
    time pass and the offline watchdog sees a live machine). No change is merged away: a second
    change of one signal within a batch is yielded separately.
    """

    def __init__(self, machine: OpcuaMachine) -> None:
        super().__init__(machine)
        self._inbox = _Inbox()
        self._on_loss.append(self._inbox.lost)
        self.revised: ua.CreateSubscriptionResult | None = None  # the server's answer to our subscription
        self.stale_after = 0.0  # no publish response for this long: the subscription is dead

    async def updates(self) -> AsyncIterator[list[Sample]]:
        m = self.machine
        client = self._alive()
        sub, index, refused = await self._subscribe(client)
        subscribed, sub_id, stale_after = time.monotonic(), sub.subscription_id, self.stale_after
        readings = await self._read_all(client)
        for i, why in refused.items():  # no item, no updates: bad, never a frozen value
            if readings[i][0] is None:
                readings[i] = (why, None)
        yield self._samples(readings, time.time())

        queue = self._inbox.queue
        while True:
            if sub.subscription_id != sub_id:
                # Someone re-created it (asyncua's watchdog does so for the subscriptions it made; with
                # asyncua 2.1 notifications got lost that way): start afresh, new session and read.
                raise ConnectionLost(m.id, f"subscription {sub_id} went stale (no publish responses)")
            heard = sub.last_publish_at or subscribed
            if time.monotonic() - heard > stale_after:
                raise ConnectionLost(m.id, f"no publish response (data or keep-alive) for {stale_after:g}s")
            self._alive()
            try:
                async with asyncio.timeout(m.poll_interval):
                    item = await queue.get()
            except TimeoutError:
                yield self._samples(readings, time.time())  # nothing changed: the latest values again
                continue
            for samples in self._take(item, readings, index):
                yield samples

    async def _subscribe(self, client: Client) -> tuple[Subscription, dict[Any, list[int]], dict[int, str]]:
        """Subscribe to every valid node: the subscription, node id -> the signals its monitored item
        updates, and signal -> why the server refused its monitored item."""
        m = self.machine
        signal_of = [i for i, node in enumerate(self._nodes) if node is not None]  # per valid node
        nodes = self._valid
        items: list[int | ua.StatusCode] = []
        try:
            async with asyncio.timeout(connect_budget(m)):
                # Not client.create_subscription(): on a revised publishing interval it would raise the
                # keep-alive count to 75 % of the session timeout (a keep-alive every 45 s), and its
                # stale-subscription watchdog would re-create the subscription behind our back.
                sub = Subscription(client.uaclient.session, subscription_parameters(m), self._inbox)
                self.revised = revised = await sub.init()
                for chunk in _chunks(nodes, self._max_items):
                    items += await sub.subscribe_data_change(
                        chunk, sampling_interval=ua.Double(m.poll_interval * 1000.0), queuesize=10
                    )
        except NETWORK_ERRORS as exc:
            raise ConnectionLost(m.id, f"cannot subscribe: {_why(exc)}") from exc
        self.stale_after = stale_limit(m, revised)
        index: dict[Any, list[int]] = {}
        refused: dict[int, str] = {}
        for i, node, created in zip(signal_of, nodes, items, strict=True):
            if isinstance(created, ua.StatusCode):
                refused[i] = created.name
            else:
                index.setdefault(node.nodeid, []).append(i)
        return sub, index, refused

    def _take(
        self, item: tuple[str, Any, Any], readings: list[tuple[str | None, Any]], index: dict[Any, list[int]]
    ) -> Iterator[list[Sample]]:
        """Apply ``item`` and every notification waiting behind it to ``readings``; yield the samples
        (also before a second change of one signal, so no change is merged away)."""
        m, queue = self.machine, self._inbox.queue
        changed: set[int] = set()
        while True:
            kind, what, dv = item
            if kind == "lost":
                raise ConnectionLost(m.id, str(what))
            if kind == "status":
                name = what.name if isinstance(what, ua.StatusCode) else str(what)
                raise ConnectionLost(m.id, f"subscription status {name}")
            for i in index.get(what, ()):
                if i in changed:  # a second change of one signal: send the first one on its own
                    yield self._samples(readings, time.time())
                    changed.clear()
                readings[i] = status_and_value(dv)
                changed.add(i)
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        yield self._samples(readings, time.time())
