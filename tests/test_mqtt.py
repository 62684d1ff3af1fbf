"""The ``mqtt`` sink: pure topic and message rules (tables), config checks, and the sink against a real
mosquitto (events, retained alert state, status and will, TLS with user and password, refusals)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import agent
from agent.errors import ConfigError, RetryLater
from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.alertlog import cloudevent
from agent.sinks.mqtt import (
    CONTENT_TYPE,
    STOP_WAIT,
    MqttSink,
    MqttSinkConfig,
    base_topic,
    event_meta,
    messages_for,
    plan_batch,
    read_password,
    subject_topic,
    tls_context,
    topic_level,
)
from tests.mosquitto import CertFiles, Mosquitto, Proxy, Subscriber, make_ca, retained

# -- pure: topic levels, subjects, base topic, messages -------------------------------------------


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("press-1", "press-1"),
        ("tool1_wear.x:y", "tool1_wear.x:y"),
        ("a+b", "a%2Bb"),
        ("#", "%23"),
        ("plant/north", "plant%2Fnorth"),
        ("100%", "100%25"),
        ("$SYS", "%24SYS"),
        ("cost$", "cost$"),
        ("", "_"),
        ("tab\there", "tab%09here"),
        ("nul\x00", "nul%00"),
        ("Presse Süd", "Presse Süd"),
    ],
)
def test_topic_level(name: str, level: str) -> None:
    assert topic_level(name) == level


@given(st.text(min_size=1))
def test_topic_level_is_one_safe_reversible_level(name: str) -> None:
    level = topic_level(name)
    assert not any(c in level for c in "+#/\x00")
    assert not level.startswith("$")
    assert unquote(level) == name


@pytest.mark.parametrize(
    ("subject", "topic"),
    [
        (None, "_gateway"),
        ("", "_gateway"),
        ("press-1/tool1-wear", "press-1/tool1-wear"),
        ("_gateway/test", "_gateway/test"),
        ("mill-2/alarms/Spindle.Overheat", "mill-2/alarms/Spindle.Overheat"),
        ("mill-2/alarms/a+b#c", "mill-2/alarms/a%2Bb%23c"),
        ("press-1", "press-1"),
    ],
)
def test_subject_topic(subject: str | None, topic: str) -> None:
    assert subject_topic(subject) == topic


@pytest.mark.parametrize(
    ("template", "gateway", "site", "topic"),
    [
        (None, "gw-1", "plant-a", "andon/plant-a/gw-1"),
        (None, "gw-1", None, "andon/gw-1"),
        ("acme/{site}/andon/{gateway}", "gw-1", "plant-a", "acme/plant-a/andon/gw-1"),
        ("fleet/{gateway}", "gw-1", "plant-a", "fleet/gw-1"),
        (None, "gw-1", "Plant A/North #2", "andon/Plant A%2FNorth %232/gw-1"),
    ],
)
def test_base_topic(template: str | None, gateway: str, site: str | None, topic: str) -> None:
    assert base_topic(template, gateway, site) == topic


def test_base_topic_with_site_placeholder_needs_a_site() -> None:
    with pytest.raises(ValueError, match=r"\{site\}"):
        base_topic("andon/{site}/{gateway}", "gw-1", None)


B = b'{"x": 1}'


@pytest.mark.parametrize(
    ("kind", "subject", "expected"),
    [
        ("andon.alert.raised", "p1/wear", [("t/events/p1/wear", B, False), ("t/alerts/p1/wear", B, True)]),
        ("andon.alert.updated", "p1/wear", [("t/events/p1/wear", B, False), ("t/alerts/p1/wear", B, True)]),
        ("andon.alert.cleared", "p1/wear", [("t/events/p1/wear", B, False), ("t/alerts/p1/wear", b"", True)]),
        ("andon.alert.acknowledged", "p1/wear", [("t/events/p1/wear", B, False)]),
        ("andon.tool.changed", "p1/tool3", [("t/events/p1/tool3", B, False)]),
        ("andon.usage.summary", "p1", [("t/events/p1", B, False)]),
        ("andon.test", "_gateway/test", [("t/events/_gateway/test", B, False)]),
        ("andon.outbox.dropped", None, [("t/events/_gateway", B, False)]),
        (
            "andon.alert.raised",
            "m/alarms/a+b",
            [("t/events/m/alarms/a%2Bb", B, False), ("t/alerts/m/alarms/a%2Bb", B, True)],
        ),
        (None, None, [("t/events/_gateway", B, False)]),
    ],
)
def test_messages_for(kind: str | None, subject: str | None, expected: list[tuple[str, bytes, bool]]) -> None:
    assert [(m.topic, m.payload, m.retain) for m in messages_for("t", kind, subject, B)] == expected


def test_plan_writes_each_alerts_state_once_per_batch() -> None:
    a, b = "p1/wear", "p1/fault"
    events = [
        ("andon.alert.raised", a, b"0", a),
        ("andon.alert.raised", b, b"1", b),
        ("andon.alert.updated", a, b"2", a),
        ("andon.alert.cleared", b, b"3", b),
        ("andon.test", "_gateway/test", b"4", "_gateway/test"),
        ("andon.alert.acknowledged", a, b"5", a),
    ]
    plan = plan_batch("t", events)
    assert [[(m.topic, m.payload, m.retain) for m in msgs] for msgs in plan.messages] == [
        [("t/events/p1/wear", b"0", False)],
        [("t/events/p1/fault", b"1", False)],
        [("t/events/p1/wear", b"2", False), ("t/alerts/p1/wear", b"2", True)],
        [("t/events/p1/fault", b"3", False), ("t/alerts/p1/fault", b"", True)],
        [("t/events/_gateway/test", b"4", False)],
        [("t/events/p1/wear", b"5", False)],
    ]
    assert plan.deferred == {0: 2, 1: 3}
    # The first event not fully acknowledged -> how many of the first events are accepted.
    assert [plan.complete(failed) for failed in range(7)] == [0, 0, 0, 1, 4, 5, 6]


@pytest.mark.parametrize(
    ("body", "meta"),
    [
        (b'{"type": "andon.test", "subject": "_gateway/test"}', ("andon.test", "_gateway/test")),
        (b'{"type": "andon.outbox.dropped"}', ("andon.outbox.dropped", None)),
        (b"[1, 2]", (None, None)),
        (b"not json", (None, None)),
        (b'{"type": 3, "subject": []}', (None, None)),
    ],
)
def test_event_meta(body: bytes, meta: tuple[str | None, str | None]) -> None:
    assert event_meta(body) == meta


# -- config -------------------------------------------------------------------------------------


def sink_cfg(**kw: Any) -> MqttSinkConfig:
    return MqttSinkConfig.model_validate({"id": "fleet", "kind": "mqtt", "url": "mqtt://127.0.0.1"} | kw)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ({"url": "http://broker"}, "mqtt"),
        ({"url": "mqtt://user:pw@broker"}, "no user or password in the url"),
        ({"url": "mqtt://broker/path"}, "without a path"),
        ({"url": "mqtt://broker:99999"}, "port"),
        ({"url": "mqtt://:1883"}, "host is missing"),
        ({"topic": "andon/+/x"}, "wildcards"),
        ({"topic": "andon/#"}, "wildcards"),
        ({"topic": "$SYS/andon"}, "belong to the broker"),
        ({"topic": "/andon"}, "empty topic levels"),
        ({"topic": "andon//x"}, "empty topic levels"),
        ({"topic": "andon/{plant}"}, "unknown placeholder {plant}"),
        ({"topic": "andon/{gateway"}, "andon/{gateway"),
        ({"password_env": "PW"}, "needs `username`"),
        ({"username": "u", "password_env": "PW", "password_file": "/x"}, "at most one"),
        ({"ca_file": "/ca.pem"}, "needs TLS"),
        ({"url": "mqtts://b", "key_file": "/k.pem"}, "needs `cert_file`"),
        ({"protocol": "4"}, "protocol"),
        ({"in_flight": 0}, "in_flight"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_config_problems(doc: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        sink_cfg(**doc)
    assert problem in str(err.value)


def test_config_defaults_and_ports() -> None:
    cfg = sink_cfg(url="mqtts://broker.example.com")
    sink = MqttSink(cfg, gateway="gw-press-line", site="plant-a")
    assert (sink.topic, sink.status_topic) == ("andon/plant-a/gw-press-line", "andon/plant-a/gw-press-line/status")
    assert sink.client_id == "andon-gw-press-line"
    assert (cfg.protocol, cfg.in_flight, cfg.timeout) == ("5", 64, 10.0)
    assert MqttSink(sink_cfg(url="mqtt://[::1]"), gateway="g", site=None)._port == 1883
    assert MqttSink(cfg, gateway="g", site=None)._port == 8883


def test_password_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDON_MQTT_PW", "s3cret")
    assert read_password(sink_cfg(username="u", password_env="ANDON_MQTT_PW"), 0) == "s3cret"
    (tmp_path / "pw").write_text("from-file\n")
    assert read_password(sink_cfg(username="u", password_file=str(tmp_path / "pw")), 1) == "from-file"
    assert read_password(sink_cfg(), 0) is None
    with pytest.raises(ConfigError, match=r"^sinks\[2\]\.password_env: environment variable NOPE_PW is not set"):
        read_password(sink_cfg(username="u", password_env="NOPE_PW"), 2)
    with pytest.raises(ConfigError, match=r"^sinks\[0\]\.password_file: cannot read"):
        read_password(sink_cfg(username="u", password_file=str(tmp_path / "missing")), 0)


def test_tls_files_are_checked(tmp_path: Path) -> None:
    assert tls_context(sink_cfg(), 0) is None
    with pytest.raises(ConfigError, match=r"^sinks\[3\]\.ca_file: cannot load it"):
        tls_context(sink_cfg(url="mqtts://b", ca_file=str(tmp_path / "nope.pem")), 3)
    ca = make_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match=r"^sinks\[0\]\.cert_file: cannot load it"):
        tls_context(sink_cfg(url="mqtts://b", ca_file=str(ca.ca), cert_file=str(ca.ca)), 0)
    client = {"cert_file": str(ca.client_cert), "key_file": str(ca.client_key)}
    ctx = tls_context(sink_cfg(url="mqtts://b", ca_file=str(ca.ca), **client), 0)
    assert ctx is not None and ctx.check_hostname


# -- against a real broker ------------------------------------------------------------------------


def event(
    seq: int, machine: str, rule: str, kind: TransitionKind, *, gateway: str, site: str | None = "lab"
) -> StoredEvent:
    t = Transition(
        machine=machine,
        rule=rule,
        signal="wear",
        kind=kind,
        severity=Severity.WARNING,
        value=81.0 + seq,
        threshold=80.0,
        message=f"{machine}: wear {81 + seq} %",
        time=1_700_000_000.0 + seq,
    )
    body = cloudevent(t, seq=seq, event_id=f"{gateway}-{seq}", gateway=gateway, site=site)
    return StoredEvent(seq, body["id"], t.severity, json.dumps(body).encode(), body["type"], body["subject"], machine)


def other(seq: int, kind: str, subject: str | None, *, gateway: str) -> StoredEvent:
    body: dict[str, Any] = {"specversion": "1.0", "id": f"{gateway}-{seq}", "type": kind, "data": {"seq": seq}}
    if subject is not None:
        body["subject"] = subject
    return StoredEvent(seq, body["id"], Severity.INFO, json.dumps(body).encode(), kind, subject, None)


def make_sink(broker: Mosquitto, gateway: str, **kw: Any) -> MqttSink:
    cfg = MqttSinkConfig.model_validate(
        {"id": "fleet", "kind": "mqtt", "url": broker.url, "timeout": "3s", "retry_max": "300ms"} | kw
    )
    return MqttSink(cfg, gateway=gateway, site="lab", password=kw.get("_password"), tls=kw.get("_tls"))


@pytest.fixture
def gw(request: pytest.FixtureRequest) -> str:
    """A gateway id of the test's own (so its topics are its own on the shared broker)."""
    return f"gw-{request.node.name[5:40].replace('[', '-').replace(']', '')}"


async def test_events_retained_state_and_status(broker: Mosquitto, gw: str) -> None:
    base = f"andon/lab/{gw}"
    batch = [
        event(1, "press-1", "wear", TransitionKind.RAISED, gateway=gw),
        event(2, "press-1", "fault", TransitionKind.RAISED, gateway=gw),
        event(3, "press-1", "wear", TransitionKind.UPDATED, gateway=gw),
        event(4, "press-1", "fault", TransitionKind.CLEARED, gateway=gw),
        other(5, "andon.test", "_gateway/test", gateway=gw),
        other(6, "andon.outbox.dropped", None, gateway=gw),
        event(7, "press-2", "wear", TransitionKind.RAISED, gateway=gw),
    ]
    async with Subscriber(broker, f"{base}/events/#") as sub, make_sink(broker, gw) as sink:
        await sink.send(batch)
        got = await sub.until(lambda ms: len(ms) >= len(batch))
    assert [m.topic for m in got] == [
        f"{base}/events/press-1/wear",
        f"{base}/events/press-1/fault",
        f"{base}/events/press-1/wear",
        f"{base}/events/press-1/fault",
        f"{base}/events/_gateway/test",
        f"{base}/events/_gateway",
        f"{base}/events/press-2/wear",
    ]
    assert [m.payload for m in got] == [e.body for e in batch]  # the CloudEvent JSON as the outbox holds it
    assert [m.json()["data"]["seq"] for m in got] == [1, 2, 3, 4, 5, 6, 7]
    assert all(m.qos == 1 and not m.retain and m.content_type == CONTENT_TYPE for m in got)

    # A subscriber that joins now sees the active alerts, each as its latest raised/updated event.
    state = await retained(broker, "andon/+/+/alerts/#")
    mine = {m.topic: m.json() for m in state if f"/{gw}/" in m.topic}
    assert set(mine) == {f"{base}/alerts/press-1/wear", f"{base}/alerts/press-2/wear"}
    assert mine[f"{base}/alerts/press-1/wear"]["type"] == "andon.alert.updated"
    assert mine[f"{base}/alerts/press-1/wear"]["id"] == f"{gw}-3"
    assert all(m.retain for m in state)

    # The clean stop left the status retained as offline.
    status = await retained(broker, f"{base}/status")
    assert [m.json() for m in status] == [{"online": False}]


async def test_birth_message_while_connected(broker: Mosquitto, gw: str) -> None:
    async with make_sink(broker, gw) as sink:
        await sink.wait_connected(5)
        [status] = await retained(broker, f"andon/lab/{gw}/status")
    doc = status.json()
    assert status.retain and doc["online"] is True
    assert (doc["gateway"], doc["site"], doc["client_id"]) == (gw, "lab", f"andon-{gw}")
    assert doc["version"] == agent.__version__


async def test_window_is_capped_by_the_brokers_receive_maximum(broker: Mosquitto, gw: str) -> None:
    async with make_sink(broker, gw) as five, make_sink(broker, gw + "-3", protocol="3.1.1", in_flight=100) as three:
        await five.wait_connected(5)
        await three.wait_connected(5)
        assert five._connected is not None and three._connected is not None
        assert five._connected.window == 20  # mosquitto's default Receive Maximum (max_inflight_messages)
        assert three._connected.window == 100  # MQTT 3.1.1 has no Receive Maximum
        batch = [event(i, "m", f"r{i % 5}", TransitionKind.RAISED, gateway=gw + "-3") for i in range(1, 301)]
        async with Subscriber(broker, f"andon/lab/{gw}-3/events/#") as sub:
            await three.send(batch)
            got = await sub.until(lambda ms: len(ms) >= 300)
    assert [m.json()["id"] for m in got] == [e.id for e in batch]
    assert all(m.content_type is None for m in got)  # MQTT 3.1.1 has no properties


async def test_refused_publish_is_partial_acceptance_not_success(broker: Mosquitto, gw: str) -> None:
    """MQTT 5 tells a refused publish (here the broker's ACL) from an accepted one: the events before
    the refused one were accepted, the refused one and those after it were not."""
    batch = [event(i, "m", f"r{i}", TransitionKind.RAISED, gateway=gw) for i in (1, 2, 3)]
    batch.append(event(4, "denied", "r", TransitionKind.RAISED, gateway=gw))
    batch.append(event(5, "m", "r1", TransitionKind.UPDATED, gateway=gw))
    refusal = f"refused the message on andon/lab/{gw}/events/denied/r: Not authorized"
    async with Subscriber(broker, f"andon/lab/{gw}/events/#") as sub, make_sink(broker, gw) as sink:
        with pytest.raises(RetryLater, match=refusal) as err:
            await sink.send(batch[:4])
        assert err.value.accepted == 3
        assert sink.connected, "a refusal is not a broken connection"
        # Event 1's retained state rides on event 5 (the alert's last in the batch), after the refusal:
        # event 1 is not accepted either.
        with pytest.raises(RetryLater, match=refusal) as err:
            await sink.send(batch)
        assert err.value.accepted == 0
        await sink.send(batch[:3])  # and the link still carries what the broker allows
        got = await sub.until(lambda ms: len(ms) >= 10)
    # Messages after a refused one were already in flight (the window): the broker took event 5; it
    # counts as not accepted all the same and goes again with the rest.
    assert [m.json()["data"]["seq"] for m in got] == [1, 2, 3, 1, 2, 3, 5, 1, 2, 3]


async def test_stop_then_start_broker_reconnects_and_says_online_again(tmp_path: Path, gw: str) -> None:
    own = Mosquitto(tmp_path / "mq")
    await own.start()
    try:
        async with make_sink(own, gw) as sink:
            await sink.wait_connected(5)
            await own.stop()
            with pytest.raises(RetryLater) as err:
                await sink.send([event(1, "m", "r", TransitionKind.RAISED, gateway=gw)])
            assert err.value.accepted == 0
            await own.start()
            await sink.wait_connected(10)
            await sink.send([event(1, "m", "r", TransitionKind.RAISED, gateway=gw)])
            [status] = await retained(own, f"andon/lab/{gw}/status")
            assert status.json()["online"] is True
            assert sink.connections == 2
    finally:
        await own.stop()


# -- TLS, user and password ---------------------------------------------------------------------


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("ANDON_TEST_MQTT_PW", "s3cret-pw")
    yield "ANDON_TEST_MQTT_PW"


def secure_sink(broker: Mosquitto, ca: CertFiles | None, gw: str, env: str, **kw: Any) -> MqttSink:
    doc = {"id": "fleet", "kind": "mqtt", "url": broker.url, "username": "gw-secure", "password_env": env}
    doc |= {"timeout": "3s", "retry_max": "300ms"} | kw
    if ca is not None:
        doc["ca_file"] = str(ca.ca)
    cfg = MqttSinkConfig.model_validate(doc)
    return MqttSink(cfg, gateway=gw, site="lab", password=read_password(cfg, 0), tls=tls_context(cfg, 0))


async def test_tls_with_private_ca_and_password(
    tls_broker: Mosquitto, ca: CertFiles, gw: str, password_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sub_tls = tls_context(sink_cfg(url="mqtts://x", ca_file=str(ca.ca)), 0)
    e = event(1, "press-1", "wear", TransitionKind.RAISED, gateway=gw)
    login = {"tls_context": sub_tls, "username": "reader", "password": "r"}
    async with (
        Subscriber(tls_broker, f"andon/lab/{gw}/#", **login) as sub,
        secure_sink(tls_broker, ca, gw, password_env) as sink,
    ):
        await sink.send([e])
        got = await sub.until(lambda ms: any(m.topic.endswith("/events/press-1/wear") for m in ms))
    assert [m.payload for m in got if "/events/" in m.topic] == [e.body]
    assert "s3cret-pw" not in caplog.text and "s3cret-pw" not in repr(sink)


async def test_tls_refuses_an_unknown_ca_and_a_wrong_password(
    tls_broker: Mosquitto, ca: CertFiles, gw: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ANDON_TEST_BAD_PW", "not-the-password")
    e = [event(1, "m", "r", TransitionKind.RAISED, gateway=gw)]
    async with secure_sink(tls_broker, None, gw, "ANDON_TEST_BAD_PW", timeout="1s") as untrusted:
        with pytest.raises(RetryLater, match="CERTIFICATE_VERIFY_FAILED") as err:
            await untrusted.send(e)
        assert err.value.accepted == 0
    async with secure_sink(tls_broker, ca, gw, "ANDON_TEST_BAD_PW", timeout="1s") as wrong:
        with pytest.raises(RetryLater, match=r"(?i)not authori[sz]ed|bad user") as err:
            await wrong.send(e)
    assert "not-the-password" not in caplog.text
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "fleet" in r.getMessage()]
    assert len(errors) == 2, "each sink says it once at ERROR, then quietly"


async def test_client_certificate(tmp_path: Path, ca: CertFiles, gw: str) -> None:
    own = Mosquitto(tmp_path / "mq", tls=ca, require_certificate=True)
    await own.start()
    try:
        base = {"id": "fleet", "kind": "mqtt", "url": own.url, "ca_file": str(ca.ca), "timeout": "2s"}
        with_cert = MqttSinkConfig.model_validate(
            base | {"cert_file": str(ca.client_cert), "key_file": str(ca.client_key)}
        )
        async with MqttSink(with_cert, gateway=gw, site=None, tls=tls_context(with_cert, 0)) as sink:
            await sink.send([event(1, "m", "r", TransitionKind.RAISED, gateway=gw, site=None)])
            assert sink.topic == f"andon/{gw}"
        without = MqttSinkConfig.model_validate(base)
        async with MqttSink(without, gateway=gw, site=None, tls=tls_context(without, 0)) as refused:
            with pytest.raises(RetryLater, match="not connected"):
                await refused.send([event(2, "m", "r", TransitionKind.RAISED, gateway=gw, site=None)])
    finally:
        await own.stop()


async def test_a_broker_that_stops_answering_is_left_and_the_will_says_so(broker: Mosquitto, gw: str) -> None:
    """No PUBACK within the timeout: the events count as not accepted, the sink drops the connection
    without a DISCONNECT (the broker publishes the will) and connects again."""
    async with Proxy(broker) as proxy, Subscriber(broker, f"andon/lab/{gw}/status") as status:
        cfg = MqttSinkConfig.model_validate(
            {"id": "fleet", "kind": "mqtt", "url": proxy.url, "timeout": "1s", "retry_max": "300ms"}
        )
        async with MqttSink(cfg, gateway=gw, site="lab") as sink:
            await sink.wait_connected(5)
            proxy.freeze()
            with pytest.raises(RetryLater, match=r"no PUBACK from .* within 1s; reconnecting") as err:
                await sink.send([event(1, "m", "r", TransitionKind.RAISED, gateway=gw)])
            assert err.value.accepted == 0
            await status.until(lambda ms: [m.json()["online"] for m in ms] == [True, False, True])
            await sink.send([event(1, "m", "r", TransitionKind.RAISED, gateway=gw)])
            assert (sink.connections, proxy.connections) == (2, 2)


async def test_a_clean_stop_is_quick_when_the_broker_hangs(broker: Mosquitto, gw: str) -> None:
    """The offline status gets STOP_WAIT; when its PUBACK does not come the connection is dropped
    (the will says offline too), and the stop does not wait for the 10 s timeout."""
    loop = asyncio.get_running_loop()
    async with Proxy(broker) as proxy, Subscriber(broker, f"andon/lab/{gw}/status") as status:
        cfg = MqttSinkConfig.model_validate({"id": "fleet", "kind": "mqtt", "url": proxy.url, "timeout": "10s"})
        async with MqttSink(cfg, gateway=gw, site="lab") as sink:
            await sink.wait_connected(5)
            proxy.freeze()
            started = loop.time()
        assert loop.time() - started < STOP_WAIT + 1.0
        await status.until(lambda ms: len(ms) >= 2 and not ms[-1].json()["online"])


async def test_a_stop_while_connecting_is_at_once() -> None:
    """A broker that takes the TCP connection and never answers CONNECT: the stop does not wait."""
    loop = asyncio.get_running_loop()
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        cfg = MqttSinkConfig.model_validate({"id": "fleet", "kind": "mqtt", "url": f"mqtt://127.0.0.1:{port}"})
        async with MqttSink(cfg, gateway="gw-silent", site=None):
            await asyncio.wait_for(connected.wait(), 5)
            started = loop.time()
        assert loop.time() - started < 0.5
