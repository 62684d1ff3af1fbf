"""The PagerDuty sink: its Events API v2 bodies (a pure function, tables), its answers, and the sink
against a fake Events API on 127.0.0.1 that checks requests and answers as PagerDuty does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.errors import ConfigError, DeliveryError, Rejected, RetryLater
from agent.sinks.pagerduty import (
    MAX_DEDUP_KEY,
    PLUGIN,
    PagerDutySink,
    PagerDutySinkConfig,
    dedup_key,
    judge,
    pagerduty_events,
)
from tests.fake_services import FakePagerDuty, Scripted
from tests.people_events import GATEWAY, ROUTING_KEY, alert_doc, send_test_doc, stored

KEY = f"{GATEWAY}/press-1/tool1-wear"


def bodies(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return pagerduty_events(doc, routing_key=ROUTING_KEY)


# -- the bodies --------------------------------------------------------------------------------


def test_raised_triggers_with_every_payload_field() -> None:
    doc = alert_doc(1, "raised", "critical", message="Change tool 1 on press-1: wear 96.5 %")
    assert bodies(doc) == [
        {
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "dedup_key": KEY,
            "payload": {
                "summary": "Change tool 1 on press-1: wear 96.5 %",
                "source": GATEWAY,
                "severity": "critical",
                "timestamp": doc["time"],
                "component": "press-1",
                "group": "plant-a",
                "class": "threshold",
                "custom_details": doc["data"],
            },
        }
    ]


@pytest.mark.parametrize(
    ("doc", "action"),
    [
        (alert_doc(2, "updated", "warning"), "trigger"),
        (alert_doc(3, "cleared", "warning"), "resolve"),
        (alert_doc(4, "acknowledged", "critical", by="Anna"), "acknowledge"),
    ],
)
def test_actions(doc: dict[str, Any], action: str) -> None:
    (body,) = bodies(doc)
    assert (body["event_action"], body["dedup_key"], body["routing_key"]) == (action, KEY, ROUTING_KEY)
    if action == "trigger":
        assert body["payload"]["severity"] == doc["data"]["severity"]
    else:
        assert set(body) == {"routing_key", "event_action", "dedup_key"}


def test_summary_class_and_group_edges() -> None:
    long = bodies(alert_doc(1, message="x" * 5000))[0]["payload"]
    assert len(long["summary"]) == 1024
    empty = bodies(alert_doc(1, "raised", "warning", message=""))[0]["payload"]
    assert empty["summary"] == "press-1/tool1-wear is warning"
    assert bodies(alert_doc(1, rule="offline"))[0]["payload"]["class"] == "offline"
    assert bodies(alert_doc(1, rule="spindle-fault", rule_kind="fault"))[0]["payload"]["class"] == "fault"
    no_kind = alert_doc(1, rule="old-rule")
    del no_kind["data"]["kind"]  # an event from before data.kind: the rule id
    assert bodies(no_kind)[0]["payload"]["class"] == "old-rule"
    assert "group" not in bodies(alert_doc(1, site=None))[0]["payload"]
    assert bodies({"type": "andon.usage.summary", "data": {}}) == []


def test_the_test_event_opens_and_resolves_an_info_incident() -> None:
    trigger, resolve = bodies(send_test_doc(9))
    key = f"{GATEWAY}/_gateway/test"
    assert (trigger["event_action"], trigger["dedup_key"], trigger["payload"]["severity"]) == ("trigger", key, "info")
    assert trigger["payload"]["summary"] == "andon-agent send-test"
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key}


def test_dedup_keys_fit_pagerdutys_limit() -> None:
    assert dedup_key(GATEWAY, "press-1/tool1-wear") == KEY
    long = dedup_key(GATEWAY, "mill-2/alarms/" + "c" * 400)
    assert len(long) == MAX_DEDUP_KEY and long == dedup_key(GATEWAY, "mill-2/alarms/" + "c" * 400)
    assert long != dedup_key(GATEWAY, "mill-2/alarms/" + "c" * 399)


# -- answers -----------------------------------------------------------------------------------

INVALID = {"status": "invalid event", "message": "Event object is invalid"}


@pytest.mark.parametrize(
    ("status", "body", "outcome", "words"),
    [
        (202, {"status": "success", "dedup_key": KEY}, None, ""),
        (400, INVALID | {"errors": ["'payload.summary' is missing or blank"]}, Rejected, "payload.summary"),
        (400, INVALID | {"errors": ["Length of 'routing_key' is incorrect"]}, RetryLater, "refuses the routing key"),
        (413, {}, Rejected, "413"),
        (429, {}, RetryLater, "429"),
        (500, {}, RetryLater, "500"),
        (503, {}, RetryLater, "503"),
        (404, {}, RetryLater, "url"),
        (403, {}, RetryLater, "url"),
    ],
)
def test_judge(status: int, body: dict[str, Any], outcome: type[DeliveryError] | None, words: str) -> None:
    response = httpx.Response(status, json=body)
    if outcome is None:
        judge(response)
        return
    with pytest.raises(outcome, match=words):
        judge(response)


# -- the sink against the fake Events API ------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def pd_config(url: str) -> PagerDutySinkConfig:
    return PagerDutySinkConfig.model_validate(
        {"id": "oncall", "kind": "pagerduty", "url": url, "routing_key_env": "PD_ROUTING_KEY"}
    )


def pd_sink(server: FakePagerDuty, client: httpx.AsyncClient, key: str = ROUTING_KEY) -> PagerDutySink:
    return PagerDutySink(pd_config(server.url), client, key)


async def test_trigger_then_resolve(pagerduty: FakePagerDuty, client: httpx.AsyncClient) -> None:
    sink = pd_sink(pagerduty, client)
    await sink.send([stored(alert_doc(1, "raised", "critical"))])
    assert pagerduty.incidents[KEY]["status"] == "triggered"
    await sink.send([stored(alert_doc(2, "acknowledged", "critical", by="Anna"))])
    assert pagerduty.incidents[KEY]["status"] == "acknowledged"
    await sink.send([stored(alert_doc(3, "cleared", "critical"))])
    assert pagerduty.incidents[KEY]["status"] == "resolved"
    assert pagerduty.answers == [202, 202, 202]


async def test_send_test_leaves_no_incident_open(pagerduty: FakePagerDuty, client: httpx.AsyncClient) -> None:
    await pd_sink(pagerduty, client).send([stored(send_test_doc(1))])
    assert pagerduty.incidents == {
        f"{GATEWAY}/_gateway/test": {"status": "resolved", "payload": pagerduty.events[0]["payload"]}
    }


async def test_a_bad_routing_key_waits_and_is_never_shown(pagerduty: FakePagerDuty, client: httpx.AsyncClient) -> None:
    secret = "short-key-0123456789"
    sink = pd_sink(pagerduty, client, key=secret)
    with pytest.raises(RetryLater, match="routing key") as info:
        await sink.send([stored(alert_doc(1))])
    assert (info.value.accepted, pagerduty.answers) == (0, [400])
    assert secret not in repr(sink) and secret not in str(info.value)


async def test_a_refused_event_is_named(pagerduty: FakePagerDuty, client: httpx.AsyncClient) -> None:
    def refuse_warnings(body: dict[str, Any] | None) -> Scripted | None:
        if body and body.get("payload", {}).get("severity") == "warning":
            return Scripted(400, INVALID | {"errors": ["'payload.custom_details' is invalid"]})
        return None

    pagerduty.script = refuse_warnings
    docs = [alert_doc(1, "raised", "critical"), alert_doc(2, "updated", "warning"), alert_doc(3, "cleared")]
    with pytest.raises(Rejected, match="custom_details") as info:
        await pd_sink(pagerduty, client).send([stored(d) for d in docs])
    assert (info.value.accepted, pagerduty.answers) == (1, [202, 400])


async def test_overload_says_how_many_were_taken(pagerduty: FakePagerDuty, client: httpx.AsyncClient) -> None:
    pagerduty.script = lambda body: Scripted(429) if body and body["event_action"] == "resolve" else None
    docs = [alert_doc(1, "raised"), alert_doc(2, "updated", "warning"), alert_doc(3, "cleared")]
    with pytest.raises(RetryLater, match="429") as info:
        await pd_sink(pagerduty, client).send([stored(d) for d in docs])
    assert info.value.accepted == 2


def test_the_routing_key_comes_from_the_environment_or_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = pd_config("https://events.pagerduty.com/v2/enqueue")
    monkeypatch.delenv("PD_ROUTING_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^sinks\[2\]\.routing_key_env: environment variable PD_ROUTING_KEY"):
        PLUGIN.secrets(cfg, 2)
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY + "\n")
    assert PLUGIN.secrets(cfg, 2) == {"routing_key": ROUTING_KEY}
    (tmp_path / "key").write_text(ROUTING_KEY)
    from_file = PagerDutySinkConfig.model_validate(
        {"id": "oncall", "kind": "pagerduty", "routing_key_file": str(tmp_path / "key")}
    )
    assert PLUGIN.secrets(from_file, 0) == {"routing_key": ROUTING_KEY}
    assert ROUTING_KEY not in PLUGIN.describe(from_file) and "routing key from" in PLUGIN.describe(from_file)
