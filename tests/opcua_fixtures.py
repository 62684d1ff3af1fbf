"""One in-process asyncua server for the whole test session (``init()`` takes about 2 s).

It offers no security, Basic256Sha256 and Aes256Sha256RsaPss (Sign and SignAndEncrypt) on one
endpoint, anonymous users and one user with a password, and a variable of every supported type.
Tests change values from the server side with :meth:`OpcuaSim.set` / :meth:`OpcuaSim.set_status`
and may stop and start it again on the same port (:meth:`OpcuaSim.restart`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.structures104 import new_enum
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua.sim import enable_condition_refresh

NS_URI = "urn:andon:test"
USER, PASSWORD = "operator", "s3cret-Pa55"
SERVER_URI = "urn:andon:test:server"

# name -> (OPC UA type, initial value); each variable's node id is "ns=<ns>;s=<name>"
VARIABLES: dict[str, tuple[ua.VariantType, Any]] = {
    "Bool": (ua.VariantType.Boolean, True),
    "SByte": (ua.VariantType.SByte, -5),
    "Byte": (ua.VariantType.Byte, 200),
    "Int16": (ua.VariantType.Int16, -30000),
    "UInt16": (ua.VariantType.UInt16, 60000),
    "Int32": (ua.VariantType.Int32, -2_000_000_000),
    "UInt32": (ua.VariantType.UInt32, 4_000_000_000),
    "Int64": (ua.VariantType.Int64, -(2**62)),
    "UInt64": (ua.VariantType.UInt64, 2**63 + 5),
    "Float": (ua.VariantType.Float, 1.25),
    "Double": (ua.VariantType.Double, 3.141592653589793),
    "String": (ua.VariantType.String, "program 42"),
    # per-test variables, so tests sharing the server do not disturb each other
    "Sub.Wear": (ua.VariantType.Double, 0.0),
    "Sub.Other": (ua.VariantType.Int32, 0),
    "Poll.Wear": (ua.VariantType.Double, 0.0),
    "Status.A": (ua.VariantType.Double, 1.0),
    "Status.B": (ua.VariantType.Double, 2.0),
    "Agent.Wear": (ua.VariantType.Double, 0.0),
    "Stale.Wear": (ua.VariantType.Double, 0.0),
    "Bench.Fault": (ua.VariantType.Boolean, False),
    "Blind.Fault": (ua.VariantType.Boolean, False),
    "Blind.Other": (ua.VariantType.Double, 1.0),
}
ENUM_VALUE = 2  # "Running" in the test enumeration


class _Users:
    """Anonymous users may read; a named user needs the right password."""

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User)
        if username == USER and password == PASSWORD:
            return User(role=UserRole.User, name=username)
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpcuaSim:
    server: Server
    port: int
    ns: int
    cert: Path  # the server's certificate (DER), for server_certificate = ...
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/andon/"

    def node_id(self, name: str) -> str:
        return f"ns={self.ns};s={name}"

    async def set(self, name: str, value: Any) -> None:
        vtype = VARIABLES[name][0] if name in VARIABLES else ua.VariantType.Int32
        await self.nodes[name].write_value(ua.DataValue(ua.Variant(value, vtype)))

    async def set_status(self, name: str, status: int, value: Any = None) -> None:
        """Give the variable a (Bad or Uncertain) status code, as a PLC does for a broken sensor."""
        variant = ua.Variant(value, VARIABLES[name][0]) if value is not None else ua.Variant()
        # asyncua annotates StatusCode's value as UInt32; it takes (and defaults to) a plain int.
        await self.nodes[name].write_value(ua.DataValue(variant, StatusCode=ua.StatusCode(status)))  # type: ignore[arg-type]

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        await self.server.start()


async def _start(pki: Path) -> OpcuaSim:
    port = free_port()
    cert, key = pki / "server-cert.der", pki / "server-key.pem"
    await setup_self_signed_certificate(
        key, cert, SERVER_URI, "127.0.0.1", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], {}
    )
    server = Server(user_manager=_Users())  # type: ignore[arg-type]
    enable_condition_refresh(server)  # alarms: the server answers ConditionRefresh
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/andon/")
    await server.set_application_uri(SERVER_URI)
    server.set_security_policy(
        [
            ua.SecurityPolicyType.NoSecurity,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ]
    )
    await server.load_certificate(cert)
    await server.load_private_key(key)
    ns = await server.register_namespace(NS_URI)
    sim = OpcuaSim(server, port, ns, cert)
    objects = server.nodes.objects
    for name, (vtype, value) in VARIABLES.items():
        # asyncua annotates NodeId's arguments as String/Int32 and Int16; it takes a plain str or int.
        sim.nodes[name] = await objects.add_variable(ua.NodeId(name, ns), name, ua.Variant(value, vtype))  # type: ignore[arg-type]
    enum_type = await new_enum(server, ns, "MachineState", ["Off", "Idle", "Running", "Fault"])
    sim.nodes["Enum"] = await objects.add_variable(
        # asyncua annotates NodeId's arguments as String/Int32 and Int16; it takes a plain str or int.
        ua.NodeId("Enum", ns),  # type: ignore[arg-type]
        "Enum",
        ua.Variant(ENUM_VALUE, ua.VariantType.Int32),
        datatype=enum_type.nodeid,
    )
    await server.start()
    return sim


@contextlib.asynccontextmanager
async def opcua_server(pki: Path) -> AsyncIterator[OpcuaSim]:
    """The test server, listening; its certificate and key are made in ``pki``.

    Use it through the session-scoped ``opcua`` fixture (tests/conftest.py) so the session starts it once.
    """
    sim = await _start(pki)
    try:
        yield sim
    finally:
        await sim.server.stop()
