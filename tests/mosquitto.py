"""A real mosquitto broker for tests (Debian's ``mosquitto`` package; ``.ci/run`` installs it).

Each :class:`Mosquitto` runs its own ``mosquitto -c <generated config>`` on a free 127.0.0.1 port,
never the system service: ``persistence false``, anonymous clients allowed unless a password file is
given, optionally a TLS listener (a test CA made with ``cryptography``), a password file made with
``mosquitto_passwd`` and an ACL file. :meth:`stop` and :meth:`start` again keep the port, so a test can
take the broker away and bring it back. :class:`Subscriber` is a real MQTT client (aiomqtt) that
collects what it receives and lets a test await a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import getpass
import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class CertFiles:
    """A CA and a server certificate for 127.0.0.1/localhost, and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(pem, pkcs8, serialization.NoEncryption())


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def make_ca(directory: Path) -> CertFiles:
    """A private CA signing a server certificate (127.0.0.1, localhost) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _cert("andon test CA", ca_key, None, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for cert_path, key_path, cn, server in (
        (files.server_cert, files.server_key, "localhost", True),
        (files.client_cert, files.client_key, "gw-client", False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _cert(cn, key, ca.subject, ca_key).add_extension(aki, critical=False)
        if server:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
    return files


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file, made by ``mosquitto_passwd`` itself."""
    path.write_text("")
    for user, password in users.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, password], check=True, capture_output=True)
    return path


@dataclass
class Mosquitto:
    """One broker process. ``tls``: the listener speaks TLS with the CA's server certificate
    (``require_certificate`` asks clients for one); ``passwords``: only these users may connect."""

    directory: Path
    tls: CertFiles | None = None
    require_certificate: bool = False
    passwords: Path | None = None
    acl: str | None = None  # the text of an ACL file
    extra: tuple[str, ...] = ()  # more config lines (e.g. "max_queued_messages 0")
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to its own user, who cannot read our files
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"log_dest file {self.directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"allow_anonymous {'false' if self.passwords else 'true'}",
        ]
        if self.passwords:
            lines.append(f"password_file {self.passwords}")
        if self.acl is not None:
            acl = self.directory / "acl"
            acl.write_text(self.acl)
            lines.append(f"acl_file {acl}")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}"]
            lines.append(f"require_certificate {'true' if self.require_certificate else 'false'}")
        lines += self.extra
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    async def start(self) -> None:
        """Start on :attr:`port` and wait until it accepts connections."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self.proc = await asyncio.create_subprocess_exec(
            MOSQUITTO, "-c", str(self._config()), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                err = (await self.proc.stderr.read()).decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{self.log}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)  # a process starting: nothing to await but its port
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise RuntimeError(f"mosquitto did not listen on {self.port} within 10 s")

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM, or ``sig``) and wait for it to exit."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(sig)
        await self.proc.wait()


@contextlib.asynccontextmanager
async def running(broker: Mosquitto) -> AsyncIterator[Mosquitto]:
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    content_type: str | None
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A real MQTT 5 client subscribed to ``topics``; ``messages`` fills as they arrive."""

    def __init__(self, broker: Mosquitto, *topics: str, **client: Any) -> None:
        self.broker = broker
        self.topics = topics
        self.client_kw = client
        self.messages: list[Received] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        waiter = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({self._task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()
        assert self._ready.is_set(), "the subscriber did not connect"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait({self._task})

    async def _run(self) -> None:
        kw: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5} | self.client_kw
        async with aiomqtt.Client("127.0.0.1", self.broker.port, **kw) as client:
            self.client = client
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self._ready.set()
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                ctype = getattr(m.properties, "ContentType", None) if m.properties else None
                self.messages.append(Received(m.topic.value, payload, m.retain, m.qos, ctype, time.monotonic()))
                self._changed.set()

    async def until(self, predicate: Callable[[list[Received]], bool], within: float = 10.0) -> list[Received]:
        """Wait until ``predicate(messages)`` holds; returns the messages."""
        async with asyncio.timeout(within):
            while not predicate(self.messages):
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]


async def retained(broker: Mosquitto, topic_filter: str, within: float = 10.0, **client: Any) -> list[Received]:
    """What a subscriber joining now gets under ``topic_filter``: the retained messages, all of them.

    A broker sends the retained messages while it handles the SUBSCRIBE, before it handles a later
    PUBLISH of the same client; so once our own marker message comes back, every retained message has.
    """
    marker = f"andon-test/marker/{id(topic_filter)}-{free_port()}"
    async with Subscriber(broker, topic_filter, marker, **client) as late:
        assert late.client is not None
        await late.client.publish(marker, b"end", qos=1)
        await late.until(lambda ms: any(m.topic == marker for m in ms), within)
        return [m for m in late.messages if m.topic != marker]


class Proxy:
    """A TCP relay on 127.0.0.1 in front of a broker. :meth:`freeze` stops relaying the broker's bytes
    to the clients (a link that silently stops answering); connections made later relay normally."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.port = 0
        self.connections = 0
        self._frozen: set[asyncio.StreamWriter] = set()
        self._clients: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._clients:
            w.close()

    def freeze(self) -> None:
        self._frozen.update(self._clients)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._clients.append(client_w)
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker.port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, from_broker: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    if from_broker and client_w in self._frozen:
                        continue  # swallowed: the client waits for answers that never come
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pump(client_r, broker_w, False), pump(broker_r, client_w, True))
