"""The whole agent in-process with the people sinks: a simulated machine -> rules -> outbox -> an http
receiver, a fake ntfy server and a fake PagerDuty Events API, all real servers on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

from agent.config import Config
from agent.demo.receiver import Receiver
from drivers.modbus.sim import SimulatedMachine
from tests.conftest import WEAR_RULES
from tests.fake_services import FakeNtfy, FakePagerDuty, Scripted
from tests.people_events import ROUTING_KEY
from tests.waiting import of, running

WEAR, FAULT = 0, 10  # holding registers of the simulated machine (tests/conftest.py WEAR_SIGNALS)


@pytest.fixture(autouse=True)
def routing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)


def people_config(
    make_config: Callable[..., Config], port: int, receiver: Receiver, ntfy: FakeNtfy, pagerduty: FakePagerDuty
) -> Config:
    """The issue's set-up: the upstream gets everything, the phones warnings and up, the on-call criticals."""
    fast = {"timeout": "2s", "retry_max": "300ms"}
    sinks: list[dict[str, Any]] = [
        {"id": "up", "kind": "http", "url": receiver.url} | fast,
        {"id": "phones", "kind": "ntfy", "url": ntfy.url, "topic": "plant-a", "min_severity": "warning"} | fast,
        {
            "id": "oncall",
            "kind": "pagerduty",
            "url": pagerduty.url,
            "routing_key_env": "PD_ROUTING_KEY",
            "min_severity": "critical",
        }
        | fast,
    ]
    # a fault toggled on purpose is not chattering
    rules: list[dict[str, Any]] = [{**cast(dict[str, Any], r), "chatter_count": 0} for r in WEAR_RULES]
    return make_config(port, rules=rules, sinks=sinks, outbox={"linger": "0s"})


def count_is(kind: str, n: int, events: list[dict[str, Any]]) -> bool:
    return len(of(events, "m1/fault", kind)) == n


def has_at_least(n: int, items: list[dict[str, Any]]) -> bool:
    return len(items) >= n


def published(ntfy: FakeNtfy, n: int) -> bool:
    return len(ntfy.messages) >= n


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].rsplit(".", 1)[1] for e in events]


async def test_escalation_and_clearing_reach_each_sink_at_its_level(
    machine: SimulatedMachine,
    receiver: Receiver,
    ntfy: FakeNtfy,
    pagerduty: FakePagerDuty,
    make_config: Callable[..., Config],
) -> None:
    async with running(people_config(make_config, machine.port, receiver, ntfy, pagerduty)):
        await machine.set("holding", WEAR, [850])  # 85.0 %: warning
        await ntfy.wait_for(lambda: len(ntfy.messages) == 1)
        await machine.set("holding", WEAR, [960])  # critical
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 1)
        await machine.set("holding", WEAR, [100])  # cleared
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 2)
        await ntfy.wait_for(lambda: len(ntfy.messages) == 3)
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "cleared")) == 1)

    assert types(receiver.events) == ["raised", "updated", "cleared"]
    assert [(m["title"], m["priority"], m["tags"]) for m in ntfy.messages] == [
        ("m1: wear warning", 4, ["warning"]),
        ("m1: wear critical", 5, ["critical"]),
        ("m1: wear cleared", 2, ["critical", "white_check_mark"]),
    ]
    assert [m["message"] for m in ntfy.messages] == [e["data"]["message"] for e in receiver.events]
    assert len(ntfy.notifications) == 1  # one notification on the phone, replaced in place
    trigger, resolve = pagerduty.events
    assert (trigger["event_action"], trigger["dedup_key"]) == ("trigger", "gw-test/m1/wear")
    assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["class"] == "threshold"
    assert trigger["payload"]["custom_details"]["seq"] == receiver.events[1]["data"]["seq"]
    assert (trigger["payload"]["component"], trigger["payload"]["group"]) == ("m1", "lab")
    assert (resolve["event_action"], resolve["dedup_key"]) == ("resolve", "gw-test/m1/wear")
    assert pagerduty.incidents["gw-test/m1/wear"]["status"] == "resolved"


async def test_a_warning_only_alert_never_pages(
    machine: SimulatedMachine,
    receiver: Receiver,
    ntfy: FakeNtfy,
    pagerduty: FakePagerDuty,
    make_config: Callable[..., Config],
) -> None:
    async with running(people_config(make_config, machine.port, receiver, ntfy, pagerduty)):
        await machine.set("holding", WEAR, [850])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "raised")) == 1)
        await machine.set("holding", WEAR, [100])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "cleared")) == 1)
        await machine.set("holding", FAULT, [0b1000])  # a critical after it: once the on-call has it,
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 1)  # it has passed the warning by
        await ntfy.wait_for(lambda: len(ntfy.messages) == 3)
    assert [e["dedup_key"] for e in pagerduty.events] == ["gw-test/m1/fault"]  # nothing of the warning
    assert [(m["title"], m["priority"]) for m in ntfy.messages] == [
        ("m1: wear warning", 4),
        ("m1: wear cleared", 2),
        ("m1: fault critical", 5),
    ]


async def test_rate_limit_and_outage_spells_lose_nothing_and_keep_order(
    machine: SimulatedMachine,
    receiver: Receiver,
    ntfy: FakeNtfy,
    pagerduty: FakePagerDuty,
    make_config: Callable[..., Config],
) -> None:
    """ntfy's bucket holds 2 (one more every 100 ms) and PagerDuty answers 503 until half the faults
    are in: both get every event they route, once each and in order; the upstream never waits."""
    ntfy.limit(burst=2, refill=0.1)
    outage = {"on": True}
    pagerduty.script = lambda body: Scripted(503, {"status": "unavailable"}) if outage["on"] else None
    cfg = people_config(make_config, machine.port, receiver, ntfy, pagerduty)
    toggles = 8
    async with running(cfg):
        for n in range(toggles):
            await machine.set("holding", FAULT, [0b1000])  # the fault rule: critical
            await receiver.wait_for(functools.partial(count_is, "raised", n + 1))
            await machine.set("holding", FAULT, [0])
            await receiver.wait_for(functools.partial(count_is, "cleared", n + 1))
            if n == toggles // 2:
                outage["on"] = False
        await ntfy.wait_for(lambda: len(ntfy.messages) == 2 * toggles)
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 2 * toggles)
    seqs = [e["data"]["seq"] for e in receiver.events]
    assert types(receiver.events) == ["raised", "cleared"] * toggles
    assert [m["priority"] for m in ntfy.messages] == [5, 2] * toggles
    assert [e["payload"]["custom_details"]["seq"] for e in pagerduty.events[::2]] == seqs[::2]
    assert [e["event_action"] for e in pagerduty.events] == ["trigger", "resolve"] * toggles
    assert 429 in ntfy.answers and 503 in pagerduty.answers
    assert ntfy.answers.count(200) == 2 * toggles  # nothing the server took was sent again


async def test_a_slow_sink_never_delays_a_fast_one(
    machine: SimulatedMachine,
    receiver: Receiver,
    ntfy: FakeNtfy,
    pagerduty: FakePagerDuty,
    make_config: Callable[..., Config],
) -> None:
    pagerduty.script = lambda body: Scripted(delay=1.5)  # answers, but each answer takes 1.5 s
    async with running(people_config(make_config, machine.port, receiver, ntfy, pagerduty)):
        started = time.monotonic()
        for n, value in enumerate((0b1000, 0, 0b1000, 0), start=1):
            await machine.set("holding", FAULT, [value])
            await receiver.wait_for(functools.partial(has_at_least, n))
            await ntfy.wait_for(functools.partial(published, ntfy, n))
        fast = time.monotonic() - started
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 4, within=15)
        slow = time.monotonic() - started
    assert fast < 1.5 < 4 * 1.5 <= slow  # all four reached the others before the on-call had the first


async def test_status_and_metrics_show_a_failing_pagerduty_sink_without_its_key(
    machine: SimulatedMachine,
    receiver: Receiver,
    ntfy: FakeNtfy,
    pagerduty: FakePagerDuty,
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    unused_tcp_port: int,
) -> None:
    wrong = "wrong-key-" + "x" * 20  # not 32 characters: PagerDuty answers 400 about the routing key
    monkeypatch.setenv("PD_ROUTING_KEY", wrong)
    cfg = people_config(make_config, machine.port, receiver, ntfy, pagerduty)
    cfg = cfg.model_copy(update={"status": cfg.status.model_copy(update={"listen": f"127.0.0.1:{unused_tcp_port}"})})
    async with running(cfg), httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_tcp_port}") as client:
        await machine.set("holding", FAULT, [0b1000])
        await pagerduty.wait_for(lambda: pagerduty.answers.count(400) >= 2)  # retried, not set aside
        await ntfy.wait_for(lambda: len(ntfy.messages) == 1)
        status, metrics = (await client.get("/status")).text, (await client.get("/metrics")).text
    sinks = {s["id"]: s for s in json.loads(status)["sinks"]}
    assert set(sinks) == {"up", "phones", "oncall"}
    assert not sinks["oncall"]["up"] and "routing key" in sinks["oncall"]["last_error"]
    assert sinks["oncall"]["pending"] == 1 and sinks["oncall"]["rejected"] == 0
    assert sinks["phones"]["up"] and sinks["phones"]["delivered"] == 1
    assert 'andon_sink_up{sink="oncall"} 0.0' in metrics and 'andon_sink_pending_events{sink="oncall"} 1.0' in metrics
    assert 'andon_sink_up{sink="phones"} 1.0' in metrics
    assert wrong not in status and wrong not in metrics


async def test_an_acknowledgement_reaches_the_sinks_that_saw_the_alert(
    machine: SimulatedMachine,
    receiver: Receiver,
    ntfy: FakeNtfy,
    pagerduty: FakePagerDuty,
    make_config: Callable[..., Config],
) -> None:
    async with running(people_config(make_config, machine.port, receiver, ntfy, pagerduty)) as agent:
        assert agent.alerts is not None
        await machine.set("holding", WEAR, [850])  # a warning: the phones see it, the on-call does not
        await machine.set("holding", FAULT, [0b1000])  # a critical: both do
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 1)
        await receiver.wait_for(lambda ev: len(ev) == 2)
        await agent.alerts.acknowledge("m1/wear", "Anna", "on my way")
        await agent.alerts.acknowledge("m1/fault", "Ben", None)
        await ntfy.wait_for(lambda: len(ntfy.messages) == 4)
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 2)
        await receiver.wait_for(lambda ev: len(ev) == 4)
    assert [e["event_action"] for e in pagerduty.events] == ["trigger", "acknowledge"]
    assert pagerduty.incidents["gw-test/m1/fault"]["status"] == "acknowledged"
    wear_ack, fault_ack = ntfy.messages[2:]
    assert (wear_ack["title"], wear_ack["priority"], wear_ack["tags"]) == (
        "m1: wear warning, acknowledged",
        2,
        ["warning", "eyes"],
    )
    assert wear_ack["message"].startswith("Acknowledged by Anna: on my way\nwear on m1 is 85")
    assert wear_ack["sequence_id"] == ntfy.messages[0]["sequence_id"]  # replaces the alert's notification
    assert fault_ack["title"] == "m1: fault critical, acknowledged" and fault_ack["message"].startswith(
        "Acknowledged by Ben\n"
    )
