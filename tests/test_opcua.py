"""The OPC UA drivers and the whole agent against one in-process asyncua server (shared per session)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from agent.config import Config, parse_config
from agent.demo.receiver import Receiver
from agent.errors import ConfigError, ConnectionLost, DriverError
from agent.model import Sample
from drivers.base import PushDriver
from drivers.opcua import OpcuaDriver, OpcuaSubscriptionDriver, to_value
from drivers.opcua.config import OpcuaMachine
from drivers.registry import make_driver
from tests.opcua_fixtures import (
    ENUM_VALUE,
    NS_URI,
    PASSWORD,
    USER,
    VARIABLES,
    OpcuaSim,
    free_port,
)
from tests.waiting import Changes, running_agent

ROOT = Path(__file__).resolve().parent.parent
TYPES = [*(n for n in VARIABLES if "." not in n), "Enum"]


def machine_doc(sim: OpcuaSim, signals: dict[str, str], **extra: Any) -> dict[str, Any]:
    """An OPC UA machine "m1" reading ``{signal id: variable name (or a raw node id with "=")}``."""
    doc: dict[str, Any] = {
        "id": "m1",
        "protocol": "opcua",
        "endpoint": sim.endpoint,
        "poll_interval": "50ms",
        "offline_after": "1s",
        "timeout": "1s",
        "reconnect_max": "300ms",
        "signals": [{"id": sid, "node": name if "=" in name else sim.node_id(name)} for sid, name in signals.items()],
    }
    doc.update(extra)
    return doc


def config(tmp_path: Path, *machines: dict[str, Any], **sections: Any) -> Config:
    doc = {
        "agent": {"gateway_id": "gw-test", "state_dir": str(tmp_path / "state")},
        "machines": list(machines),
        "status": {"listen": None},
        **sections,
    }
    return parse_config(doc)


def machine(tmp_path: Path, sim: OpcuaSim, signals: dict[str, str], **extra: Any) -> OpcuaMachine:
    m = config(tmp_path, machine_doc(sim, signals, **extra)).machines[0]
    assert isinstance(m, OpcuaMachine)
    return m


def by_signal(samples: list[Sample]) -> dict[str, Sample]:
    return {s.signal: s for s in samples}


async def next_until(
    updates: AsyncIterator[list[Sample]], predicate: Callable[[dict[str, Sample]], bool], within: float = 5.0
) -> dict[str, Sample]:
    async with asyncio.timeout(within):
        async for samples in updates:
            got = by_signal(samples)
            if predicate(got):
                return got
    raise AssertionError("updates() ended")


# --------------------------------------------------------------------------------------------
# Subscription and poll mode


async def test_subscription_yields_current_values_then_changes(opcua: OpcuaSim, tmp_path: Path) -> None:
    await opcua.set("Sub.Wear", 10.0)
    m = machine(tmp_path, opcua, {"wear": "Sub.Wear", "other": "Sub.Other"})
    assert m.mode == "subscribe"
    driver = make_driver(m)
    assert isinstance(driver, OpcuaSubscriptionDriver) and isinstance(driver, PushDriver)
    async with driver:
        updates = driver.updates()
        first = by_signal(await anext(updates))
        assert set(first) == {"wear", "other"}  # the first list holds every signal
        assert first["wear"].good and first["wear"].value == 10.0
        for value in (20.5, 30.0, 96.5):
            await opcua.set("Sub.Wear", value)

            def has_value(s: dict[str, Sample], v: float = value) -> bool:
                return s["wear"].value == v

            got = await next_until(updates, has_value)
            assert got["other"].good  # every list holds every signal's latest sample
        # Nothing changes: the latest values come again every poll_interval (time-based rules need it).
        again = await next_until(updates, lambda s: True, within=1.0)
        assert again["wear"].value == 96.5


async def test_two_changes_within_one_publish_are_both_seen(opcua: OpcuaSim, tmp_path: Path) -> None:
    m = machine(tmp_path, opcua, {"wear": "Sub.Wear"}, poll_interval="300ms")
    async with OpcuaDriver(m) as driver:
        assert isinstance(driver, OpcuaSubscriptionDriver)
        updates = driver.updates()
        await anext(updates)
        seen: list[Any] = []
        await opcua.set("Sub.Wear", 1.0)
        await opcua.set("Sub.Wear", 2.0)  # both land in one publish (every 300 ms)

        def record(s: dict[str, Sample]) -> bool:
            seen.append(s["wear"].value)
            return s["wear"].value == 2.0

        await next_until(updates, record)
        assert 1.0 in seen


async def test_poll_mode_reads_every_node_in_one_request(opcua: OpcuaSim, tmp_path: Path) -> None:
    await opcua.set("Poll.Wear", 42.0)
    m = machine(tmp_path, opcua, {"wear": "Poll.Wear", "b": "Bool", "s": "String"}, mode="poll")
    driver = make_driver(m)
    assert isinstance(driver, OpcuaDriver) and not isinstance(driver, PushDriver)
    async with driver:
        client = driver._client
        assert client is not None
        reads: list[int] = []
        inner = client.uaclient.read_attributes

        async def counting(nodeids: list[Any], attr: Any) -> Any:
            reads.append(len(nodeids))
            return await inner(nodeids, attr)

        client.uaclient.read_attributes = counting  # type: ignore[method-assign]
        got = by_signal(await driver.read())
        assert (got["wear"].value, got["b"].value, got["s"].value) == (42.0, True, "program 42")
        await opcua.set("Poll.Wear", 43.0)
        assert by_signal(await driver.read())["wear"].value == 43.0
        assert reads == [3, 3]


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_every_supported_type_reaches_the_rules(opcua: OpcuaSim, tmp_path: Path, mode: str) -> None:
    m = machine(tmp_path, opcua, {name.lower(): name for name in TYPES}, mode=mode)
    async with OpcuaDriver(m) as driver:
        if isinstance(driver, OpcuaSubscriptionDriver):
            samples = await anext(driver.updates())
        else:
            samples = await driver.read()
    got = by_signal(samples)
    expected = {n.lower(): v for n, (_, v) in VARIABLES.items() if n in TYPES} | {"enum": ENUM_VALUE}
    assert {k: s.error for k, s in got.items() if not s.good} == {}
    assert {k: s.value for k, s in got.items()} == expected
    assert type(got["bool"].value) is bool and type(got["enum"].value) is int
    assert type(got["uint64"].value) is int and type(got["float"].value) is float


def test_to_value_table() -> None:
    import enum

    class State(enum.IntEnum):
        RUNNING = 2

    assert to_value(True) == (True, None)
    assert to_value(State.RUNNING) == (2, None) and type(to_value(State.RUNNING)[0]) is int
    assert to_value(7) == (7, None)
    assert to_value(2.5) == (2.5, None)
    assert to_value("x") == ("x", None)
    assert to_value(float("nan"))[0] is None
    assert to_value(None) == (None, "no value (null)")
    assert to_value(b"\x00") == (None, "unsupported value type bytes")
    assert to_value([1, 2]) == (None, "unsupported value type list")


# --------------------------------------------------------------------------------------------
# Bad nodes and bad status codes


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_unknown_node_is_one_log_line_and_the_others_keep_working(
    opcua: OpcuaSim, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="andon.opcua")
    signals = {"wear": "Sub.Wear" if mode == "subscribe" else "Poll.Wear", "ghost": f"ns={opcua.ns};s=No.Such.Node"}
    extra = {"garbled": "ns=2;i=notanumber", "by_uri": f"nsu={NS_URI};s=Bool", "lost_ns": "nsu=urn:nope;s=Bool"}
    m = machine(tmp_path, opcua, signals | extra, mode=mode)
    async with OpcuaDriver(m) as driver:
        for _ in range(3):
            if isinstance(driver, OpcuaSubscriptionDriver):
                samples = await anext(driver.updates())
            else:
                samples = await driver.read()
            got = by_signal(samples)
            assert got["wear"].good
            assert (got["ghost"].good, got["ghost"].error) == (False, "BadNodeIdUnknown")
            assert (got["garbled"].good, got["garbled"].error) == (False, "BadNodeIdInvalid")
            assert got["by_uri"].good and got["by_uri"].value is True  # nsu=: namespace found by its URI
            assert (got["lost_ns"].good, got["lost_ns"].error) == (False, "BadNodeIdUnknown")
    lines = [r.getMessage() for r in caplog.records if "ghost" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "machine m1" in lines[0] and "signal ghost" in lines[0] and "BadNodeIdUnknown" in lines[0]
    assert "the other signals keep working" in lines[0]


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_bad_and_uncertain_status_give_bad_samples_with_the_status_name(
    opcua: OpcuaSim, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="andon.opcua")
    await opcua.set("Status.A", 1.0)
    await opcua.set("Status.B", 2.0)
    m = machine(tmp_path, opcua, {"a": "Status.A", "b": "Status.B"}, mode=mode)
    async with OpcuaDriver(m) as driver:
        if isinstance(driver, OpcuaSubscriptionDriver):
            updates = driver.updates()

            async def until(predicate: Callable[[dict[str, Sample]], bool]) -> dict[str, Sample]:
                return await next_until(updates, predicate)
        else:

            async def until(predicate: Callable[[dict[str, Sample]], bool]) -> dict[str, Sample]:
                for _ in range(250):  # poll mode: polling is the point
                    if predicate(got := by_signal(await driver.read())):
                        return got
                    await asyncio.sleep(0.02)
                raise AssertionError("no such sample within 5 s")

        await until(lambda s: s["a"].value == 1.0)
        await opcua.set_status("Status.A", StatusCodes.BadSensorFailure, 5.0)
        got = await until(lambda s: not s["a"].good)
        assert (got["a"].value, got["a"].error) == (None, "BadSensorFailure")
        assert got["b"].good and got["b"].value == 2.0
        await opcua.set_status("Status.A", StatusCodes.UncertainLastUsableValue, 6.0)
        got = await until(lambda s: s["a"].error == "UncertainLastUsableValue")
        assert got["a"].value is None
        await opcua.set("Status.A", 7.0)
        got = await until(lambda s: s["a"].good)
        assert got["a"].value == 7.0
    messages = [r.getMessage() for r in caplog.records]
    assert any("signal a" in t and "BadSensorFailure" in t for t in messages)
    assert any("signal a" in t and "good again" in t for t in messages)


# --------------------------------------------------------------------------------------------
# Security and users


async def test_username_and_password_from_env_or_file(
    opcua: OpcuaSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_OPCUA_PASSWORD", PASSWORD)
    m = machine(tmp_path, opcua, {"b": "Bool"}, mode="poll", username=USER, password_env="TEST_OPCUA_PASSWORD")
    async with OpcuaDriver(m) as driver:
        assert (await driver.read())[0].good

    secret = tmp_path / "password"
    secret.write_text("wrong-password\n")
    m = machine(tmp_path, opcua, {"b": "Bool"}, mode="poll", username=USER, password_file=str(secret))
    with pytest.raises(ConnectionLost, match="cannot connect") as err:
        async with OpcuaDriver(m):
            pass
    assert "wrong-password" not in str(err.value)
    secret.write_text(PASSWORD + "\n")  # read again on every connect
    async with OpcuaDriver(m) as driver:
        assert (await driver.read())[0].good

    monkeypatch.delenv("TEST_OPCUA_PASSWORD")
    m = machine(tmp_path, opcua, {"b": "Bool"}, mode="poll", username=USER, password_env="TEST_OPCUA_PASSWORD")
    with pytest.raises(DriverError, match="password_env: environment variable TEST_OPCUA_PASSWORD is not set"):
        async with OpcuaDriver(m):
            pass
    assert not [r for r in caplog.records if PASSWORD in r.getMessage() or "wrong-password" in r.getMessage()]


async def test_sign_and_encrypt_with_a_generated_certificate(opcua: OpcuaSim, tmp_path: Path) -> None:
    m = machine(
        tmp_path, opcua, {"wear": "Sub.Wear", "b": "Bool"}, security_policy="Basic256Sha256", username=USER,
        password_env="TEST_OPCUA_PW",
    )  # fmt: skip
    assert m.message_security_mode == "SignAndEncrypt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_OPCUA_PW", PASSWORD)
        async with OpcuaDriver(m) as driver:
            assert isinstance(driver, OpcuaSubscriptionDriver)
            client = driver._client
            assert client is not None and client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            first = by_signal(await anext(driver.updates()))
            assert first["b"].value is True
    cert = m.pki_dir / "client-cert.der"
    assert cert.is_file() and (m.pki_dir / "client-key.pem").is_file()
    assert m.pki_dir == tmp_path / "state" / "opcua" / "m1"
    made = cert.read_bytes()

    # The same pair again, now with the server's certificate trusted by file and another policy.
    m = machine(
        tmp_path, opcua, {"b": "Bool"}, mode="poll", security_policy="Aes256Sha256RsaPss",
        server_certificate=str(opcua.cert),
    )  # fmt: skip
    async with OpcuaDriver(m) as driver:
        assert (await driver.read())[0].value is True
    assert cert.read_bytes() == made

    # A server certificate that is not the server's: no session.
    m = machine(
        tmp_path, opcua, {"b": "Bool"}, mode="poll", security_policy="Basic256Sha256", server_certificate=str(cert)
    )
    with pytest.raises(ConnectionLost):
        async with OpcuaDriver(m):
            pass


async def test_the_client_key_is_made_off_the_event_loop(
    opcua: OpcuaSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RSA key takes seconds of CPU on a Pi: made on the loop, it would stall every machine and
    the watchdog. The real generator runs, watched for the thread it runs on."""
    from asyncua.client.client import Client
    from asyncua.crypto import cert_gen, uacrypto

    from drivers.opcua.driver import client_pair

    real, threads = cert_gen.generate_private_key, []

    def generate() -> Any:
        threads.append(threading.current_thread())
        return real()

    monkeypatch.setattr(cert_gen, "generate_private_key", generate)
    m = machine(tmp_path, opcua, {"b": "Bool"}, security_policy="Basic256Sha256")
    cert, key = await client_pair(Client(opcua.endpoint), m)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    assert key.stat().st_mode & 0o777 == 0o600  # the private key is its owner's only
    public = (await uacrypto.load_certificate(cert)).public_key().public_numbers()
    assert (await uacrypto.load_private_key(key)).public_key().public_numbers() == public  # a matching pair
    assert await client_pair(Client(opcua.endpoint), m) == (cert, key) and len(threads) == 1  # kept, not made again


async def test_configured_certificate_files(opcua: OpcuaSim, tmp_path: Path) -> None:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = tmp_path / "mine.der", tmp_path / "mine.pem"
    await setup_self_signed_certificate(
        key, cert, "urn:site:gateway-7", "gateway-7", [ExtendedKeyUsageOID.CLIENT_AUTH], {}
    )
    m = machine(
        tmp_path, opcua, {"b": "Bool"}, mode="poll", security_policy="Basic256Sha256", security_mode="Sign",
        certificate=str(cert), private_key=str(key),
    )  # fmt: skip
    async with OpcuaDriver(m) as driver:
        assert driver._client is not None and driver._client.application_uri == "urn:site:gateway-7"
        assert (await driver.read())[0].value is True
    assert not m.pki_dir.exists()

    m = machine(
        tmp_path, opcua, {"b": "Bool"}, security_policy="Basic256Sha256", certificate=str(tmp_path / "nope.der"),
        private_key=str(key),
    )  # fmt: skip
    with pytest.raises(DriverError, match="certificate: no such file"):
        async with OpcuaDriver(m):
            pass


# --------------------------------------------------------------------------------------------
# Config


OK = {"id": "m", "protocol": "opcua", "endpoint": "opc.tcp://plc:4840/", "signals": [{"id": "s", "node": "i=2258"}]}


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ({"password": "x"}, "password", "never goes in the config"),
        ({"security_mode": "Sign"}, "security_mode", 'needs a `security_policy` other than "None"'),
        ({"certificate": "c.der"}, "certificate", "needs a `security_policy`"),
        ({"server_certificate": "s.der"}, "server_certificate", "needs a `security_policy`"),
        ({"security_policy": "Basic256Sha256", "certificate": "c.der"}, "private_key", "set both"),
        ({"security_policy": "Basic128Rsa15"}, "security_policy", "Input should be"),
        ({"security_policy": "Basic256Sha256", "security_mode": "None"}, "security_mode", "Input should be"),
        ({"username": "u"}, "username", "needs `password_env` or `password_file`"),
        ({"password_env": "PW"}, "password_env", "needs `username`"),
        ({"username": "u", "password_env": "PW", "password_file": "f"}, "password_file", "at most one"),
        ({"endpoint": "opc.tcp://u:hunter2@plc:4840/"}, "endpoint", "must not hold credentials"),
        ({"endpoint": "http://plc/"}, "endpoint", "opc.tcp://"),
        ({"mode": "push"}, "mode", "Input should be 'subscribe' or 'poll'"),
    ],
)
def test_bad_opcua_configs_name_the_key(extra: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"machines": [OK | extra]})
    text = str(err.value)
    assert f"machines[0].{key}: " in text and message in text, text
    assert "hunter2" not in text


def test_opcua_defaults() -> None:
    m = parse_config({"agent": {"state_dir": "/srv/andon"}, "machines": [OK]}).machines[0]
    assert isinstance(m, OpcuaMachine)
    assert (m.mode, m.security_policy, m.security_mode, m.message_security_mode) == ("subscribe", "None", None, "None")
    assert (m.certificate, m.private_key, m.server_certificate) == (None, None, None)
    assert (m.username, m.password_env, m.password_file) == (None, None, None)
    assert m.pki_dir == Path("/srv/andon/opcua/m")


def test_asyncua_is_imported_only_for_opcua_machines(tmp_path: Path) -> None:
    code = f"""
import asyncio, sys
from agent.config import load_config
from agent.pipeline.supervisor import Agent
from drivers.registry import Drivers
cfg = load_config({str(ROOT / "config" / "demo.toml")!r})
assert all(m.protocol == "modbus" for m in cfg.machines)
async def main():
    drivers = Drivers()
    agent = Agent(cfg, driver_factory=drivers)
    for m in cfg.machines:
        drivers(m)
    await drivers.aclose()
asyncio.run(main())
from agent.cli.check import summary
summary(cfg)
assert "asyncua" not in sys.modules, "asyncua was imported"
import drivers.opcua.values
assert "asyncua" not in sys.modules, "the pure values module imports asyncua"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------------------------
# The whole agent: rules, recovery after a server restart


def running(cfg: Config, changes: Changes) -> Any:
    return running_agent(cfg, changes=changes)


def of(events: list[dict[str, Any]], subject: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["subject"] == subject and e["type"] == f"andon.alert.{kind}"]


async def test_agent_recovers_after_a_server_restart_on_the_same_port(
    opcua: OpcuaSim, tmp_path: Path, receiver: Receiver
) -> None:
    await opcua.set("Agent.Wear", 10.0)
    wear_rule = {"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80, "critical": 95}
    cfg = config(
        tmp_path,
        machine_doc(opcua, {"wear": "Agent.Wear"}, poll_interval="100ms", offline_after="1s"),
        rules=[wear_rule],
        sinks=[{"id": "up", "kind": "http", "url": receiver.url, "timeout": "2s", "retry_max": "300ms"}],
    )
    changes = Changes()
    loop = asyncio.get_running_loop()
    async with running(cfg, changes) as agent:
        status = agent.machines[0].status
        await opcua.set("Agent.Wear", 85.0)  # seen by the initial read or by the subscription
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "raised")) == 1)
        # A quiet machine is not an offline one: values keep coming while nothing changes.
        reads = status.reads
        await asyncio.sleep(1.3)  # longer than offline_after; nothing to await: it must NOT happen
        assert status.reads > reads and not status.offline

        await opcua.stop()
        stopped = loop.time()
        await receiver.wait_for(lambda ev: len(of(ev, "m1/offline", "raised")) == 1)
        assert loop.time() - stopped <= 1.0 + 0.1 + 0.5  # offline_after + one poll + delivery allowance
        await opcua.set("Agent.Wear", 96.0)  # changed while the agent cannot see it
        await opcua.start()  # same port, same address space
        await receiver.wait_for(lambda ev: len(of(ev, "m1/offline", "cleared")) == 1)
        # The value changed during the outage is re-read on reconnect...
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "updated")) == 1)
        assert of(receiver.events, "m1/wear", "updated")[0]["data"]["severity"] == "critical"
        # ...and the new subscription delivers again.
        await opcua.set("Agent.Wear", 5.0)
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "cleared")) == 1)
        assert status.connected


async def test_a_subscription_that_stops_delivering_is_replaced(opcua: OpcuaSim, tmp_path: Path) -> None:
    """The server forgets the subscription (no BadShutdown, no closed socket): data must not stop."""
    await opcua.set("Stale.Wear", 1.0)
    m = machine(tmp_path, opcua, {"wear": "Stale.Wear"}, poll_interval="100ms", offline_after="600ms")
    driver = OpcuaDriver(m)
    assert isinstance(driver, OpcuaSubscriptionDriver)
    async with driver:
        updates = driver.updates()
        await next_until(updates, lambda s: s["wear"].value == 1.0)
        service = opcua.server.iserver.subscription_service
        ids = list(service.subscriptions)
        await service.delete_subscriptions(ids)
        await opcua.set("Stale.Wear", 2.0)
        with pytest.raises(ConnectionLost, match=r"stale|no publish response"):
            await next_until(updates, lambda s: False, within=10.0)
    async with driver:  # what the supervisor does on ConnectionLost: a fresh session reads the value
        await next_until(driver.updates(), lambda s: s["wear"].value == 2.0)


# --------------------------------------------------------------------------------------------
# check --connect


def _toml(sim: OpcuaSim, tmp_path: Path, signals: dict[str, str]) -> Path:
    lines = [
        "[agent]",
        'gateway_id = "gw-test"',
        f'state_dir = "{tmp_path / "state"}"',
        "[[machines]]",
        'id = "mill"',
        'protocol = "opcua"',
        f'endpoint = "{sim.endpoint}"',
        'timeout = "1s"',
    ]
    for sid, node in signals.items():
        lines += ["[[machines.signals]]", f'id = "{sid}"', f'node = "{node}"']
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_check_connect_shows_type_and_value_of_every_node(
    opcua: OpcuaSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import EXIT_FATAL, EXIT_OK, main

    await opcua.set("Poll.Wear", 12.5)
    names = {"wear": "Poll.Wear", "state": "Enum", "flag": "Bool", "text": "String", "count": "UInt16"}
    path = _toml(opcua, tmp_path, {k: opcua.node_id(v) for k, v in names.items()} | {"uri": f"nsu={NS_URI};s=Int16"})
    assert await asyncio.to_thread(main, ["check", "--connect", "--config", str(path)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert f"machine mill: {opcua.endpoint} (security None, anonymous): connected" in lines
    assert f"  signal wear: node ns={opcua.ns};s=Poll.Wear: Double = 12.5" in lines
    assert f"  signal state: node ns={opcua.ns};s=Enum: MachineState = {ENUM_VALUE}" in lines
    assert f"  signal flag: node ns={opcua.ns};s=Bool: Boolean = True" in lines
    assert f"  signal text: node ns={opcua.ns};s=String: String = 'program 42'" in lines
    assert f"  signal count: node ns={opcua.ns};s=UInt16: UInt16 = 60000" in lines
    assert f"  signal uri: node nsu={NS_URI};s=Int16: Int16 = -30000" in lines
    assert lines[-1] == "config OK, every OPC UA node resolves"

    path = _toml(opcua, tmp_path, {"wear": opcua.node_id("Poll.Wear"), "ghost": opcua.node_id("No.Such")})
    assert await asyncio.to_thread(main, ["check", "--connect", "--config", str(path)]) == EXIT_FATAL
    out = capsys.readouterr().out
    assert f"  signal ghost: node ns={opcua.ns};s=No.Such: BadNodeIdUnknown (the server has no such node" in out
    assert out.splitlines()[-1] == "config valid, but not every OPC UA node can be read (see above)"

    down = _toml(opcua, tmp_path, {"wear": "i=2258"}).read_text().replace(str(opcua.port), str(free_port()))
    path.write_text(down)
    assert await asyncio.to_thread(main, ["check", "--connect", "--config", str(path)]) == EXIT_FATAL
    assert "cannot connect" in capsys.readouterr().out


def test_check_summary_says_how_each_opcua_machine_is_read() -> None:
    from agent.cli.check import summary

    secure = OK | {
        "security_policy": "Aes128Sha256RsaOaep",
        "security_mode": "Sign",
        "server_certificate": "/etc/pki/plc.der",
        "username": "svc",
        "password_file": "/run/credentials/pw",
    }
    cfg = parse_config({"agent": {"state_dir": "/srv/a"}, "machines": [secure, OK | {"id": "p", "mode": "poll"}]})
    lines = summary(cfg).splitlines()
    assert (
        "  subscribe to data changes (sampling and publishing every 1s), security Aes128Sha256RsaOaep Sign "
        "(client certificate in /srv/a/opcua/m), server certificate /etc/pki/plc.der, "
        "user svc (password from /run/credentials/pw)"
    ) in lines
    assert "  poll: all 1 node(s) in one Read every 1s, no security" in lines


class FreezingProxy:
    """TCP proxy to the server; ``freeze()`` stops forwarding on open connections without closing them.

    That is a pulled cable or a hung PLC: no FIN, no RST, just silence. New connections go through.
    """

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.frozen: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._open:
            w.close()

    def freeze(self) -> None:
        self.frozen |= self._open

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._open |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, mine: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if mine in self.frozen:
                    continue  # swallowed: the peer hears nothing, the socket stays open
                dst.write(data)
                await dst.drain()

        with contextlib.suppress(OSError):
            await asyncio.gather(pump(reader, up_writer, writer), pump(up_reader, writer, writer))


async def test_a_silent_connection_ends_the_session_in_both_modes(opcua: OpcuaSim, tmp_path: Path) -> None:
    """No FIN, no RST, no BadShutdown: the session must still end (then the supervisor reconnects)."""
    async with FreezingProxy(opcua.port) as proxy:
        doc = {"endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/andon/", "poll_interval": "100ms", "timeout": "500ms"}
        sub = machine(tmp_path, opcua, {"wear": "Sub.Wear"}, **doc)
        poll = machine(tmp_path, opcua, {"wear": "Poll.Wear"}, mode="poll", **doc)

        async def subscribed() -> None:
            async with OpcuaDriver(sub) as driver:
                assert isinstance(driver, OpcuaSubscriptionDriver)
                async for _ in driver.updates():
                    proxy.freeze()

        async def polled() -> None:
            async with OpcuaDriver(poll) as driver:
                while True:
                    await driver.read()
                    proxy.freeze()
                    await asyncio.sleep(0.1)

        async def ends(run: Callable[[], Any]) -> None:
            with pytest.raises(ConnectionLost):
                await run()

        async with asyncio.timeout(6):  # the watchdog reads every max(1s, timeout); stale publish: 2.4s
            await asyncio.gather(ends(subscribed), ends(polled))
        async with OpcuaDriver(sub) as driver:  # a fresh session through the same proxy works
            assert isinstance(driver, OpcuaSubscriptionDriver)
            await anext(driver.updates())


@contextlib.asynccontextmanager
async def operation_limits(sim: OpcuaSim, per_read: int, per_call: int) -> AsyncIterator[None]:
    """Give the shared server small MaxNodesPerRead / MaxMonitoredItemsPerCall for one test."""
    # asyncua annotates NodeId's identifier as Int32 (or String, ...); it takes a plain int.
    nodes = [
        sim.server.get_node(ua.NodeId(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)),  # type: ignore[arg-type]
        sim.server.get_node(ua.NodeId(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)),  # type: ignore[arg-type]
    ]
    old = [await n.read_value() for n in nodes]
    for n, v in zip(nodes, (per_read, per_call), strict=True):
        await n.write_value(ua.Variant(v, ua.VariantType.UInt32))
    try:
        yield
    finally:
        for n, v in zip(nodes, old, strict=True):
            await n.write_value(ua.Variant(v or 0, ua.VariantType.UInt32))


async def test_the_servers_operation_limits_split_reads_and_subscriptions(
    opcua: OpcuaSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncua.common.subscription import Subscription

    calls: list[int] = []
    create = Subscription.create_monitored_items

    async def counting(self: Subscription, items: Any) -> Any:
        items = list(items)
        calls.append(len(items))
        return await create(self, items)

    monkeypatch.setattr(Subscription, "create_monitored_items", counting)
    names = {"a": "Int16", "b": "Int32", "c": "Double", "d": "String", "e": "Bool"}
    async with operation_limits(opcua, per_read=2, per_call=3):
        for mode in ("poll", "subscribe"):
            m = machine(tmp_path, opcua, names, mode=mode)
            async with OpcuaDriver(m) as driver:
                assert (driver._max_read, driver._max_items) == (2, 3)
                client = driver._client
                assert client is not None
                reads: list[int] = []
                inner = client.uaclient.read_attributes

                async def count_reads(nodeids: list[Any], attr: Any, inner: Any = inner, reads: Any = reads) -> Any:
                    reads.append(len(nodeids))
                    return await inner(nodeids, attr)

                client.uaclient.read_attributes = count_reads  # type: ignore[method-assign]
                if isinstance(driver, OpcuaSubscriptionDriver):
                    got = by_signal(await anext(driver.updates()))
                else:
                    got = by_signal(await driver.read())
                assert all(s.good for s in got.values()) and got["d"].value == "program 42"
                assert reads == [2, 2, 1]
    assert calls == [3, 2]


async def test_a_monitored_item_the_server_refuses_makes_its_signal_bad(
    opcua: OpcuaSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value that reads fine but cannot be monitored must not be re-sent, frozen, forever."""
    from asyncua.common.subscription import Subscription

    create = Subscription.create_monitored_items

    async def refuse_the_second(self: Subscription, items: Any) -> Any:
        results = await create(self, items)
        # asyncua annotates StatusCode's value as UInt32; it takes (and defaults to) a plain int.
        return [results[0], ua.StatusCode(StatusCodes.BadTooManyMonitoredItems), *results[2:]]  # type: ignore[arg-type]

    monkeypatch.setattr(Subscription, "create_monitored_items", refuse_the_second)
    m = machine(tmp_path, opcua, {"wear": "Sub.Wear", "other": "Sub.Other"})
    async with OpcuaDriver(m) as driver:
        assert isinstance(driver, OpcuaSubscriptionDriver)
        updates = driver.updates()
        first = by_signal(await anext(updates))
        assert first["wear"].good
        assert (first["other"].good, first["other"].error) == (False, "BadTooManyMonitoredItems")
        await opcua.set("Sub.Wear", 55.5)
        got = await next_until(updates, lambda s: s["wear"].value == 55.5)
        assert got["other"].error == "BadTooManyMonitoredItems"


@pytest.mark.parametrize(
    ("push", "message"),
    [
        (lambda d: d._inbox.status_change_notification(_status(StatusCodes.BadTimeout)), "status BadTimeout"),
        (lambda d: d._inbox.status_change_notification(_status(StatusCodes.BadShutdown)), "status BadShutdown"),
        (lambda d: asyncio.ensure_future(d._on_lost(ConnectionError("transport lost"))), "transport lost"),
    ],
)
async def test_a_subscription_status_change_or_lost_connection_ends_updates(
    opcua: OpcuaSim, tmp_path: Path, push: Callable[[Any], Any], message: str
) -> None:
    m = machine(tmp_path, opcua, {"wear": "Sub.Wear"}, poll_interval="1s")
    async with OpcuaDriver(m) as driver:
        assert isinstance(driver, OpcuaSubscriptionDriver)
        updates = driver.updates()
        await anext(updates)
        push(driver)
        with pytest.raises(ConnectionLost, match=message):
            async with asyncio.timeout(0.5):  # at once, not after a poll_interval or a watchdog tick
                async for _ in updates:  # the subscription's initial notification may come first
                    pass


def _status(code: int) -> ua.StatusChangeNotification:
    # asyncua annotates StatusCode's value as UInt32; it takes (and defaults to) a plain int.
    return ua.StatusChangeNotification(Status=ua.StatusCode(code))  # type: ignore[arg-type]


async def test_a_revised_publishing_interval_sets_the_dead_subscription_limit(
    opcua: OpcuaSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server with a longer minimum publishing interval is not taken for a dead one (nor its keep-alive)."""
    service = opcua.server.iserver.subscription_service
    create = service.create_subscription

    async def at_least_400ms(params: ua.CreateSubscriptionParameters, *args: Any, **kwargs: Any) -> Any:
        params.RequestedPublishingInterval = max(params.RequestedPublishingInterval, 400.0)
        return await create(params, *args, **kwargs)

    monkeypatch.setattr(service, "create_subscription", at_least_400ms)
    m = machine(tmp_path, opcua, {"wear": "Sub.Wear"}, poll_interval="100ms", offline_after="600ms", timeout="1s")
    async with OpcuaDriver(m) as driver:
        assert isinstance(driver, OpcuaSubscriptionDriver)
        updates = driver.updates()
        await anext(updates)
        assert driver.revised is not None and driver.revised.RevisedPublishingInterval == 400.0
        assert driver.revised.RevisedMaxKeepAliveCount == 2  # as requested: no 45 s keep-alive
        assert driver.stale_after == pytest.approx(2 * 0.4 * 2 + 1.0 + 1.0)
        sub = service.subscriptions[driver.revised.SubscriptionId]
        assert sub.data.RevisedMaxKeepAliveCount == 2  # asyncua did not modify it afterwards


def test_a_full_notification_queue_drops_the_session_instead_of_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from drivers.opcua import driver as opcua_driver

    monkeypatch.setattr(opcua_driver, "INBOX_LIMIT", 3)
    inbox = opcua_driver._Inbox()
    node = SimpleNamespace(nodeid="n")
    for v in range(6):
        inbox.datachange_notification(node, v, SimpleNamespace(monitored_item=SimpleNamespace(Value=v)))  # type: ignore[arg-type]
    items = [inbox.queue.get_nowait() for _ in range(inbox.queue.qsize())]
    assert [kind for kind, _, _ in items] == ["data", "data", "data", "lost"]
    assert [dv for kind, _, dv in items[:3]] == [0, 1, 2]  # in order, none dropped before the session ends
