"""One connection to an MQTT broker for the ``mqtt`` sink: aiomqtt's client plus what its 2.x API leaves out.

aiomqtt (on paho-mqtt) does the protocol: connecting (TLS, credentials, the will), keepalive and the
socket in the event loop. Its ``publish()`` waits for each PUBACK on its own timer and throws away
the PUBACK's reason code, so an MQTT 5 broker's refusal (``Not authorized`` from an ACL) would count
as accepted. :class:`Link` adds three things, through the callbacks aiomqtt's client hands to paho:

- :meth:`Link.publish_qos1` sends one QoS 1 message at once and returns a future for its PUBACK's reason
  code (None when the connection was lost first), so the sink can keep a window of messages in
  flight without a task or a timer per message;
- :attr:`Link.receive_maximum`: the broker's Receive Maximum from its CONNACK (MQTT 5), the most
  QoS 1 messages it takes in flight from one client;
- :meth:`Link.abort` ends a sick connection without a DISCONNECT packet, so the broker publishes the
  will, as it does when the gateway vanishes.

A link is one connection: it is entered once and then thrown away. Messages paho still holds when
the connection ends go with it; the outbox, never the client, keeps what was not acknowledged.
aiomqtt's errors are translated here into :class:`~agent.errors.RetryLater`. This module imports
aiomqtt and paho: it is imported only when an ``mqtt`` sink connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import RetryLater

PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}


def connect(
    host: str,
    port: int,
    *,
    client_id: str,
    protocol: str,
    will: tuple[str, bytes],
    username: str | None,
    password: str | None,
    tls: ssl.SSLContext | None,
    timeout: float,
    keepalive: int,
) -> Link:
    """A link to enter (``async with``); ``will`` is (topic, payload), published retained at QoS 1."""
    return Link(
        host,
        port,
        identifier=client_id,
        protocol=PROTOCOLS[protocol],
        will=aiomqtt.Will(will[0], will[1], qos=1, retain=True),
        username=username,
        password=password,
        tls_context=tls,
        timeout=timeout,
        keepalive=keepalive,
        # The sink bounds the window itself (never over the broker's Receive Maximum). Unlimited here,
        # paho never queues a message and never scans its in-flight list on each PUBACK (it does
        # when it has a limit: 5 % of the CPU per message with 64 in flight).
        max_inflight_messages=0,
    )


class _PackedOnce(Properties):
    """PUBLISH properties that pack themselves once: paho packs them again for every message, and
    that scan of every property name was a fifth of the CPU per message in ``bench/mqtt_drain.py``."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)  # Properties.__setattr__ takes property names only
        return packed


def content_type(value: str) -> Properties:
    """MQTT 5 PUBLISH properties carrying a content type (built once, sent with every message)."""
    props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = value
    return props


class Link(aiomqtt.Client):
    """aiomqtt's client with a publish that returns a future for the PUBACK's reason code.

    Caller guarantees: :meth:`publish` only between a successful ``__aenter__`` and ``__aexit__``,
    from the event loop's thread; :meth:`lost` once the connection is known to be gone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receive_maximum: int | None = None  # from the CONNACK; None: the broker sets no limit
        self._acks: dict[int, asyncio.Future[ReasonCode | None]] = {}

    async def __aenter__(self) -> Self:
        """Connect (TLS handshake, CONNACK); RetryLater says why it failed (refused, TLS, credentials)."""
        try:
            return await super().__aenter__()
        except aiomqtt.MqttError as exc:
            raise RetryLater(f"cannot connect: {exc}") from exc

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        maximum = getattr(properties, "ReceiveMaximum", None)
        if isinstance(maximum, int) and maximum > 0:
            self.receive_maximum = maximum
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def publish_qos1(
        self, topic: str, payload: bytes, *, retain: bool, properties: Properties | None
    ) -> asyncio.Future[ReasonCode | None]:
        """Send one QoS 1 message now; the future gets the PUBACK's reason code, or None if the
        connection is lost before it. Raises RetryLater when there is no connection and ValueError
        for a topic MQTT cannot carry (a wildcard, over 65,535 bytes)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RetryLater(f"cannot publish: {paho.error_string(info.rc)}")
        fut: asyncio.Future[ReasonCode | None] = self._loop.create_future()
        self._acks[info.mid] = fut
        return fut

    def lost(self) -> None:
        """The connection is gone: every PUBACK still awaited resolves to None."""
        for fut in self._acks.values():
            if not fut.done():
                fut.set_result(None)
        self._acks.clear()

    def abort(self) -> None:
        """End the connection without a DISCONNECT packet: the broker publishes the will."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def closed(self) -> str:
        """Wait until the connection ends (the broker or the network closes it); returns why."""
        try:
            async for _ in self.messages:  # nothing is subscribed: this ends only with the connection
                pass
        except aiomqtt.MqttError as exc:
            cause = exc.__cause__
            return f"{cause or exc}"
        return "disconnected"
