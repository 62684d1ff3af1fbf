"""The ``mqtt`` sink in the whole agent: config and ``check``, delivery through the outbox while the
broker goes away and comes back, another sink never waiting for it, the will after SIGKILL, and
aiomqtt/paho staying unimported without an mqtt sink."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import EXIT_CONFIG, EXIT_OK, main
from agent.config import Config, load_config, parse_config
from agent.demo.receiver import Receiver
from agent.errors import ConfigError
from agent.sinks.mqtt import MqttSinkConfig
from drivers.modbus.sim import SimulatedMachine
from tests.agent_process import ROOT, AgentProcess
from tests.mosquitto import Mosquitto, Received, Subscriber, retained
from tests.waiting import running_agent

EXAMPLE = ROOT / "config" / "example.toml"
FAULT_ON, FAULT_OFF = [8], [0]  # holding 10, bit 3: the "fault" signal of the shared test machine


def mqtt_sink(url: str, **kw: Any) -> dict[str, Any]:
    return {"id": "fleet", "kind": "mqtt", "url": url, "timeout": "2s", "retry_max": "300ms"} | kw


def minimal(**sink: Any) -> dict[str, Any]:
    return {
        "agent": {"gateway_id": "gw-1", "site": "plant-a"},
        "machines": [{"id": "m", "protocol": "modbus", "host": "h", "signals": [{"id": "s", "address": 0}]}],
        "sinks": [mqtt_sink("mqtt://broker") | sink],
    }


# -- config and check ---------------------------------------------------------------------------


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.topic: uses \{site\} but \[agent\] site is not set"):
        parse_config(minimal(topic="andon/{site}/{gateway}") | {"agent": {"gateway_id": "gw-1"}})
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.url: .*no user or password in the url"):
        parse_config(minimal(url="mqtts://u:p@broker"))
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.ca_file: .*needs TLS"):
        parse_config(minimal(ca_file="/etc/ca.pem"))
    cfg = parse_config(minimal() | {"agent": {"gateway_id": "gw-1"}})  # no site: the default topic has none
    assert isinstance(cfg.sinks[0], MqttSinkConfig) and cfg.sinks[0].topic is None


def test_example_mqtt_block_uncommented_loads(tmp_path: Path) -> None:
    """The example's commented mqtt sink is valid as written, every key of it."""
    text = EXAMPLE.read_text()
    start = text.index('# [[sinks]]\n# id = "fleet"')
    block = re.sub(r"^# ?", "", text[start:], flags=re.MULTILINE)
    block = re.sub(r"^password_file = .*$", "", block, flags=re.MULTILINE)  # the alternative to password_env
    (tmp_path / "agent.toml").write_text(text[:start] + block)
    cfg = load_config(tmp_path / "agent.toml")
    fleet = next(s for s in cfg.sinks if s.id == "fleet")
    assert isinstance(fleet, MqttSinkConfig)
    defaults = MqttSinkConfig.model_validate({"id": "x", "kind": "mqtt", "url": "mqtt://h"})
    for key in ("protocol", "in_flight", "keepalive", "timeout", "retry_max"):
        assert getattr(fleet, key) == getattr(defaults, key), (
            f"example.toml shows {key} with another value than its default"
        )


def test_check_describes_the_sink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ngateway_id = "gw-1"\nsite = "plant-a"\n'
        '[[machines]]\nid = "m"\nprotocol = "modbus"\nhost = "h"\n'
        '  [[machines.signals]]\n  id = "s"\n  address = 0\n'
        '[[sinks]]\nid = "fleet"\nkind = "mqtt"\nurl = "mqtts://broker.example.com"\n'
        'username = "gw-1"\npassword_env = "ANDON_MQTT_PASSWORD"\n'
    )
    assert main(["check", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    line = (
        "sink fleet: mqtt mqtts://broker.example.com (MQTT 5, QoS 1), topic andon/[{site}/]{gateway}, "
        "password from $ANDON_MQTT_PASSWORD"
    )
    assert any(o.startswith(line) for o in out), out
    path.write_text(path.read_text().replace('site = "plant-a"\n', "") + 'topic = "x/{site}"\n')
    assert main(["check", "--config", str(path)]) == EXIT_CONFIG
    assert "sinks[0].topic: uses {site} but [agent] site is not set" in capsys.readouterr().err


def test_aiomqtt_is_imported_only_for_an_mqtt_sink() -> None:
    """Loading and checking configs, even one with an mqtt sink, does not import aiomqtt or paho:
    only connecting does."""
    code = f"""
import sys
from agent.cli import main
from agent.config import parse_config
import agent.pipeline.supervisor, agent.sinks.registry, agent.sinks.mqtt
assert main(["check", "--config", {str(EXAMPLE)!r}]) == 0
parse_config({minimal()!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("aiomqtt", "paho"))
assert not loaded, loaded
import agent.sinks.mqttlink
assert "aiomqtt" in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


# -- the whole agent ------------------------------------------------------------------------------


def events_of(ms: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in ms if "/events/" in m.topic]


def count(n: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: len(events) == n


def first_seen(events: list[dict[str, Any]]) -> list[int]:
    """The seqs in the order each id was first received (a redelivery may repeat an id)."""
    seen: dict[str, int] = {}
    for e in events:
        seen.setdefault(e["id"], e["data"]["seq"])
    return list(seen.values())


async def test_broker_away_while_transitions_happen_loses_nothing_and_never_delays_http(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    own = Mosquitto(tmp_path / "mq")
    await own.start()
    http = {"id": "up", "kind": "http", "url": receiver.url, "timeout": "2s", "retry_max": "300ms"}
    cfg = make_config(machine.port, sinks=[http, mqtt_sink(own.url)])
    base = "andon/lab/gw-test"
    try:
        async with Subscriber(own, f"{base}/events/#", f"{base}/status") as before, running_agent(cfg):
            await before.until(lambda ms: any(m.topic.endswith("/status") and m.json()["online"] for m in ms))
            await machine.set("holding", 10, FAULT_ON)
            await before.until(lambda ms: len(events_of(ms)) == 1)
            await own.stop()
            # Transitions while the broker is away: the http sink gets each one without waiting.
            for n, value in enumerate([FAULT_OFF, FAULT_ON, FAULT_OFF, FAULT_ON], start=2):
                await machine.set("holding", 10, value)
                await receiver.wait_for(count(n), within=5)
            await own.start()
            async with Subscriber(own, f"{base}/events/#") as after:
                await after.until(lambda ms: len(set(first_seen(events_of(ms)))) >= 4, within=20)
            alerts = await retained(own, f"{base}/alerts/#")
        status = await retained(own, f"{base}/status")  # after the clean stop
    finally:
        await own.stop()
    http_seqs = [e["data"]["seq"] for e in receiver.events]
    assert len(http_seqs) == 5
    delivered = first_seen(events_of(before.messages)) + first_seen(events_of(after.messages))
    assert delivered == http_seqs  # every event, once each, in seq order (the first one before the outage)
    assert [m.json()["type"] for m in alerts] == ["andon.alert.raised"]  # the fault is active again
    assert alerts[0].topic == f"{base}/alerts/m1/fault" and alerts[0].json()["data"]["seq"] == http_seqs[-1]
    assert [m.json()["online"] for m in status] == [False]  # the agent stopped cleanly


PROCESS_CONFIG = """
[agent]
gateway_id = "gw-kill"
site = "lab"
state_dir = "{state}"

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "50ms"
timeout = "300ms"

  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3

[[rules]]
id = "fault"
machine = "m1"
signal = "fault"
kind = "fault"

[status]
listen = ""

[[sinks]]
id = "fleet"
kind = "mqtt"
url = "{url}"
retry_max = "300ms"
"""


async def test_sigkill_the_will_says_offline_and_a_restart_says_online(
    tmp_path: Path, machine: SimulatedMachine, broker: Mosquitto
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(PROCESS_CONFIG.format(state=tmp_path / "state", port=machine.port, url=broker.url))
    status_topic = "andon/lab/gw-kill/status"

    def online(ms: list[Received]) -> list[bool]:
        return [json.loads(m.payload)["online"] for m in ms if m.topic == status_topic]

    async with Subscriber(broker, status_topic, "andon/lab/gw-kill/events/#") as sub:
        agent = AgentProcess(path)
        await agent.start()
        await sub.until(lambda ms: online(ms) == [True], within=20)
        await machine.set("holding", 10, FAULT_ON)
        await sub.until(lambda ms: len(events_of(ms)) == 1)
        assert await agent.signal(signal.SIGKILL) == -signal.SIGKILL
        await sub.until(lambda ms: online(ms) == [True, False])  # the broker published the will
        again = AgentProcess(path)
        await again.start()
        await sub.until(lambda ms: online(ms) == [True, False, True], within=20)
        assert await again.signal(signal.SIGTERM) == 0
        await sub.until(lambda ms: online(ms) == [True, False, True, False])
    [state] = await retained(broker, "andon/lab/gw-kill/alerts/#")
    assert state.json()["type"] == "andon.alert.raised"  # alert state survived the kill: not raised twice
    # The event may come twice (acknowledged, killed before the outbox noted it), with the same id.
    assert {e["id"] for e in events_of(sub.messages)} == {state.json()["id"]}
