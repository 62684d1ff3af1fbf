"""The fake ntfy and PagerDuty servers answer as the real services document (so the sinks' tests mean
something): checked here with plain HTTP requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fake_services import FakeNtfy, FakePagerDuty
from tests.people_events import ROUTING_KEY


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"topic": "plant-a", "message": "hi", "priority": 5, "tags": ["warning"]}, 200, None),
        ({"topic": "plant/a", "message": "hi"}, 400, 40009),
        ({"message": "hi"}, 400, 40009),
        ({"topic": "plant-a", "priority": 6}, 400, 40007),
        ({"topic": "plant-a", "tags": "warning"}, 400, 40024),
        ({"topic": "plant-a", "sequence_id": "press-1/tool1"}, 400, 40049),
        ({"topic": "plant-a", "message": "x" * 5000}, 413, 41303),
    ],
)
async def test_ntfy_checks_the_publish_body(
    ntfy: FakeNtfy, client: httpx.AsyncClient, body: dict[str, Any], status: int, code: int | None
) -> None:
    r = await client.post(ntfy.url, json=body)
    assert r.status_code == status
    if code is None:
        assert r.json()["event"] == "message" and r.json()["topic"] == "plant-a"
    else:
        assert r.json()["code"] == code and r.json()["http"] == status and r.json()["error"]


async def test_ntfy_rate_limit_and_token(ntfy: FakeNtfy, client: httpx.AsyncClient) -> None:
    ntfy.limit(burst=1, refill=3600)
    first = await client.post(ntfy.url, json={"topic": "t", "message": "1"})
    second = await client.post(ntfy.url, json={"topic": "t", "message": "2"})
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.json()["code"] == 42901 and "retry-after" not in second.headers
    ntfy.reset()
    ntfy.token = "tk_x"
    assert (await client.post(ntfy.url, json={"topic": "t"})).status_code == 403
    assert (await client.post(ntfy.url, json={"topic": "t"}, headers={"Authorization": "Bearer no"})).status_code == 401
    ok = await client.post(ntfy.url, json={"topic": "t"}, headers={"Authorization": "Bearer tk_x"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"event_action": "trigger", "payload": {"summary": "s", "source": "gw", "severity": "critical"}}, 202, None),
        ({"event_action": "trigger", "payload": {"source": "gw", "severity": "critical"}}, 400, "payload.summary"),
        ({"event_action": "trigger", "payload": {"summary": "s", "severity": "critical"}}, 400, "payload.source"),
        ({"event_action": "trigger", "payload": {"summary": "s", "source": "gw"}}, 400, "payload.severity"),
        ({"event_action": "trigger", "payload": {"summary": "s", "source": "gw", "severity": "high"}}, 400, "severity"),
        ({"event_action": "resolve"}, 400, "dedup_key"),
        ({"event_action": "resolve", "dedup_key": "k"}, 202, None),
        ({"event_action": "close", "dedup_key": "k"}, 400, "event_action"),
        ({"event_action": "resolve", "dedup_key": "k", "routing_key": "short"}, 400, "routing_key"),
    ],
)
async def test_pagerduty_checks_the_event(
    pagerduty: FakePagerDuty, client: httpx.AsyncClient, body: dict[str, Any], status: int, error: str | None
) -> None:
    r = await client.post(pagerduty.url, json={"routing_key": ROUTING_KEY} | body)
    assert r.status_code == status
    if error is None:
        assert r.json()["status"] == "success" and r.json()["dedup_key"]
    else:
        assert r.json()["status"] == "invalid event" and any(error in e for e in r.json()["errors"])


async def test_pagerduty_refuses_what_is_not_json(pagerduty: FakePagerDuty, client: httpx.AsyncClient) -> None:
    r = await client.post(pagerduty.url, content=b"{nope")
    assert (r.status_code, r.json()["status"]) == (400, "Unrecognized object")
