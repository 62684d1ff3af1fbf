"""Shared fixtures: a simulated Modbus machine, a real HTTP receiver, and config builders.

All async tests and fixtures run in one session loop (pyproject sets both default loop scopes),
so servers started by a fixture answer while a test runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.config import Config, parse_config
from agent.demo.receiver import Receiver
from drivers.modbus.sim import SimulatedMachine
from tests.board_helpers import Browser, browser_session
from tests.fake_services import FakeNtfy, FakePagerDuty
from tests.mosquitto import CertFiles, Mosquitto, make_ca, password_file

if TYPE_CHECKING:
    from tests.opcua_fixtures import OpcuaSim


@pytest.fixture
async def machine() -> AsyncIterator[SimulatedMachine]:
    async with SimulatedMachine(registers=200) as m:
        yield m


@pytest.fixture(scope="session")
async def opcua(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpcuaSim]:
    """One asyncua server for every test of the session (starting one takes about 2 s).

    asyncua is imported only when a test asks for it (a Modbus-only run never imports it).
    """
    from tests.opcua_fixtures import opcua_server

    async with opcua_server(tmp_path_factory.mktemp("opcua-server-pki")) as sim:
        yield sim


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture(scope="session")
async def ntfy_session() -> AsyncIterator[FakeNtfy]:
    server = FakeNtfy()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def ntfy(ntfy_session: FakeNtfy) -> FakeNtfy:
    """The session's fake ntfy server, reset for this test (see tests/fake_services.py)."""
    ntfy_session.reset()
    return ntfy_session


@pytest.fixture(scope="session")
async def pagerduty_session() -> AsyncIterator[FakePagerDuty]:
    server = FakePagerDuty()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def pagerduty(pagerduty_session: FakePagerDuty) -> FakePagerDuty:
    """The session's fake PagerDuty Events API, reset for this test."""
    pagerduty_session.reset()
    return pagerduty_session


def machine_doc(mid: str, port: int, signals: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": mid,
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "poll_interval": "50ms",
        "offline_after": "1s",
        "timeout": "300ms",
        "reconnect_max": "500ms",
        "signals": signals,
    }
    doc.update(extra)
    return doc


WEAR_SIGNALS = [
    {"id": "wear", "register": "holding", "address": 0, "type": "uint16", "scale": 0.1, "unit": "%"},
    {"id": "fault", "register": "holding", "address": 10, "type": "bit", "bit": 3},
]
WEAR_RULES = [
    {
        "id": "wear",
        "machine": "m1",
        "signal": "wear",
        "kind": "threshold",
        "warning": 80,
        "critical": 95,
        "deadband": 1,
    },
    {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault"},
]


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a validated Config: one machine "m1" on ``port`` with a wear and a fault rule by default."""

    def build(
        port: int,
        url: str | None = None,
        *,
        machines: list[dict[str, Any]] | None = None,
        rules: list[dict[str, Any]] | None = None,
        **sections: Any,
    ) -> Config:
        doc: dict[str, Any] = {
            "agent": {"gateway_id": "gw-test", "site": "lab", "state_dir": str(tmp_path / "state")},
            "machines": machines or [machine_doc("m1", port, WEAR_SIGNALS)],
            "rules": WEAR_RULES if rules is None else rules,
            "status": {"listen": None},
        }
        if url:
            doc["sinks"] = [{"id": "up", "kind": "http", "url": url, "timeout": "2s", "retry_max": "300ms"}]
        doc.update(sections)
        return parse_config(doc)

    return build


@pytest.fixture
def stop_event() -> Iterator[asyncio.Event]:
    yield asyncio.Event()


# Anonymous clients of the shared broker may do anything but publish events of a machine named
# "denied" (the mqtt tests' refused publish).
ACL = "topic readwrite #\ntopic deny andon/+/+/events/denied/#\n"


@pytest.fixture(scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mosquitto]:
    """One real mosquitto for the session (each test uses its own gateway id, hence its own topics)."""
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"), acl=ACL)
    await b.start()
    yield b
    await b.stop()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A private test CA with a server certificate for 127.0.0.1 and a client certificate."""
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
async def tls_broker(tmp_path_factory: pytest.TempPathFactory, ca: CertFiles) -> AsyncIterator[Mosquitto]:
    """A mosquitto speaking TLS with the test CA's certificate; users gw-secure and reader only."""
    d = tmp_path_factory.mktemp("mosquitto-tls")
    b = Mosquitto(d, tls=ca, passwords=password_file(d / "passwd", {"gw-secure": "s3cret-pw", "reader": "r"}))
    await b.start()
    yield b
    await b.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole session (Debian's chromium and chromium-driver)."""
    yield from browser_session()
