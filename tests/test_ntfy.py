"""The ntfy sink: its publish body (a pure function, tables), its answers, and the sink against a
fake ntfy server on 127.0.0.1 that checks requests and answers as ntfy does (tests/fake_services.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agent.errors import DeliveryError, Rejected, RetryLater
from agent.sinks.base import SendTimeout
from agent.sinks.ntfy import (
    MAX_MESSAGE_BYTES,
    RATE_LIMIT_WAIT,
    NtfySink,
    NtfySinkConfig,
    check_click,
    humanize,
    judge,
    ntfy_message,
    render_click,
    sequence_id,
)
from tests.fake_services import FakeNtfy, Scripted
from tests.people_events import GATEWAY, alert_doc, send_test_doc, stored

CLICK = "https://service.example.com/alerts/{alert}?m={machine}&r={rule}"
SEQ_ID = sequence_id(GATEWAY, "press-1/tool1-wear")


def publish(doc: dict[str, Any], click: str | None = CLICK) -> dict[str, Any]:
    return ntfy_message(doc, topic="acme-plant-a", click=click)


# -- the publish body --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "title", "priority", "tags"),
    [
        (alert_doc(1, "raised", "critical"), "press-1: tool 1 wear critical", 5, ["critical"]),
        (alert_doc(2, "updated", "warning"), "press-1: tool 1 wear warning", 4, ["warning"]),
        (alert_doc(3, "raised", "info"), "press-1: tool 1 wear info", 3, ["info"]),
        (alert_doc(4, "cleared", "warning"), "press-1: tool 1 wear cleared", 2, ["warning", "white_check_mark"]),
        (
            alert_doc(5, "acknowledged", "critical", by="Anna", note="on my way"),
            "press-1: tool 1 wear critical, acknowledged",
            2,
            ["critical", "eyes"],
        ),
        (alert_doc(6, "raised", "warning", rule="offline"), "press-1: offline warning", 4, ["warning"]),
        (
            alert_doc(7, "raised", "critical", machine="mill-2", rule="alarms", part="Spindle.Overtemp"),
            "mill-2: alarms Spindle.Overtemp critical",
            5,
            ["critical"],
        ),
    ],
)
def test_alert_notifications(doc: dict[str, Any], title: str, priority: int, tags: list[str]) -> None:
    body = publish(doc)
    assert set(body) == {"topic", "title", "message", "priority", "tags", "click", "sequence_id"}
    assert (body["topic"], body["title"], body["priority"], body["tags"]) == ("acme-plant-a", title, priority, tags)
    machine, rule = doc["data"]["machine"], doc["data"]["rule"]
    assert body["click"] == f"https://service.example.com/alerts/{doc['subject']}?m={machine}&r={rule}"
    assert body["sequence_id"] == sequence_id(GATEWAY, doc["subject"])


def test_message_is_the_events_message() -> None:
    doc = alert_doc(1, message="Change tool 1 on press-1: wear 96 %")
    assert publish(doc)["message"] == "Change tool 1 on press-1: wear 96 %"
    ack = publish(alert_doc(2, "acknowledged", message="wear 96 %", by="Anna", note="on my way"))
    assert ack["message"] == "Acknowledged by Anna: on my way\nwear 96 %"
    assert (
        publish(alert_doc(3, "acknowledged", message="wear 96 %", by="Ben"))["message"]
        == "Acknowledged by Ben\nwear 96 %"
    )


def test_one_notification_per_alert() -> None:
    """Every event of one alert has the same sequence id; other alerts and gateways have their own."""
    ids = {publish(alert_doc(n, kind))["sequence_id"] for n, kind in enumerate(["raised", "updated", "cleared"])}
    assert ids == {SEQ_ID}
    assert publish(alert_doc(4, rule="spindle-fault"))["sequence_id"] != SEQ_ID
    assert sequence_id("gw-other", "press-1/tool1-wear") != SEQ_ID
    for key in ("press-1/tool1-wear", "mill-2/alarms/ns=2;s=Spindle:Overtemp", "a" * 300):
        assert re.fullmatch(r"[-_A-Za-z0-9]{1,64}", sequence_id(GATEWAY, key))


def test_without_click_and_for_the_test_event() -> None:
    assert "click" not in publish(alert_doc(1), click=None)
    body = publish(send_test_doc(9))
    assert body == {
        "topic": "acme-plant-a",
        "title": f"{GATEWAY}: test notification",
        "message": "andon-agent send-test",
        "priority": 3,
        "tags": ["test_tube"],
        "sequence_id": sequence_id(GATEWAY, "_gateway/test"),
    }


def test_long_messages_fit_ntfys_limit() -> None:
    body = publish(alert_doc(1, message="Verschleiß " * 1000))
    assert len(body["message"].encode()) <= MAX_MESSAGE_BYTES
    assert body["message"].endswith("...") and body["message"].startswith("Verschleiß")


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("tool1-wear", "tool 1 wear"),
        ("spindle_fault", "spindle fault"),
        ("offline", "offline"),
        ("T12.life", "T 12 life"),
    ],
)
def test_humanize(rule: str, words: str) -> None:
    assert humanize(rule) == words


def test_click_templates() -> None:
    assert check_click(CLICK) == CLICK
    assert (
        render_click("https://x/{alert}", "mill-2/alarms/a b:c", "mill-2", "alarms")
        == "https://x/mill-2/alarms/a%20b:c"
    )
    for bad, why in [
        ("https://x/{serial}", "unknown field"),
        ("https://x/{alert", "not a valid template"),
        ("ftp://x/{alert}", r"not an http\(s\) URL"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_click(bad)


# -- answers -----------------------------------------------------------------------------------


def answer(status: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body or {}, headers=headers)


@pytest.mark.parametrize(
    ("response", "outcome", "words"),
    [
        (answer(200, {"id": "x"}), None, ""),
        (
            answer(429, {"code": 42901, "http": 429, "error": "limit reached: too many requests"}),
            RetryLater,
            "rate limit",
        ),
        (answer(400, {"code": 40024, "http": 400, "error": "invalid request"}), Rejected, "invalid request"),
        (answer(400, {"code": 40009, "http": 400, "error": "invalid request: topic invalid"}), RetryLater, "topic"),
        (answer(400, {"code": 40010, "http": 400, "error": "topic name is not allowed"}), RetryLater, "topic"),
        (answer(413, {"code": 41303, "http": 413, "error": "JSON body too large"}), Rejected, "too large"),
        (answer(401, {"code": 40101, "http": 401, "error": "unauthorized"}), RetryLater, "token"),
        (answer(403, {"code": 40301, "http": 403, "error": "forbidden"}), RetryLater, "token"),
        (answer(404, {"code": 40401, "http": 404, "error": "page not found"}), RetryLater, "url"),
        (answer(408), RetryLater, "408"),
        (answer(500), RetryLater, "500"),
        (answer(503), RetryLater, "503"),
    ],
)
def test_judge(response: httpx.Response, outcome: type[DeliveryError] | None, words: str) -> None:
    if outcome is None:
        judge(response)
        return
    with pytest.raises(outcome, match=words):
        judge(response)


def test_a_429_waits_at_least_ntfys_refill() -> None:
    with pytest.raises(RetryLater) as info:
        judge(answer(429, {"code": 42901}))
    assert info.value.retry_after == RATE_LIMIT_WAIT
    with pytest.raises(RetryLater) as info:
        judge(answer(429, {"code": 42901}, **{"Retry-After": "30"}))  # a proxy in front may send one
    assert info.value.retry_after == 30


# -- the sink against the fake server ----------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def ntfy_config(url: str, **keys: Any) -> NtfySinkConfig:
    return NtfySinkConfig.model_validate({"id": "phones", "kind": "ntfy", "url": url, "topic": "acme-plant-a"} | keys)


def ntfy_sink(
    server: FakeNtfy, client: httpx.AsyncClient, token: str | None = "tk_secret", wait: float = 5.0, **keys: Any
) -> NtfySink:
    return NtfySink(ntfy_config(server.url, **keys), client, token, rate_limit_wait=wait)


LIFECYCLE = [
    alert_doc(1, "raised", "warning"),
    alert_doc(2, "updated", "critical"),
    alert_doc(3, "cleared", "critical"),
]


async def test_publishes_a_lifecycle_as_one_notification(ntfy: FakeNtfy, client: httpx.AsyncClient) -> None:
    ntfy.token = "tk_secret"
    await ntfy_sink(ntfy, client, click=CLICK).send([stored(d) for d in LIFECYCLE])
    assert [m["priority"] for m in ntfy.messages] == [4, 5, 2]
    assert all(r.headers["authorization"] == "Bearer tk_secret" for r in ntfy.accepted)
    assert list(ntfy.notifications) == [SEQ_ID]  # the phone shows one notification: the latest
    assert ntfy.notifications[SEQ_ID]["title"] == "press-1: tool 1 wear cleared"


async def test_a_wrong_token_waits(ntfy: FakeNtfy, client: httpx.AsyncClient) -> None:
    ntfy.token = "tk_right"
    sink = ntfy_sink(ntfy, client, token="tk_wrong")
    with pytest.raises(RetryLater, match="token") as info:
        await sink.send([stored(d) for d in LIFECYCLE])
    assert (info.value.accepted, ntfy.answers) == (0, [401])
    assert "tk_wrong" not in repr(sink) and "tk_wrong" not in str(info.value)
    with pytest.raises(RetryLater, match="HTTP 403"):
        await ntfy_sink(ntfy, client, token=None).send([stored(LIFECYCLE[0])])


async def test_rate_limited_after_the_burst(ntfy: FakeNtfy, client: httpx.AsyncClient) -> None:
    """ntfy's bucket is empty after the burst: the sink says how many were taken, and to wait."""
    ntfy.limit(burst=2, refill=3600)
    with pytest.raises(RetryLater) as info:
        await ntfy_sink(ntfy, client).send([stored(d) for d in LIFECYCLE])
    assert (info.value.accepted, info.value.retry_after) == (2, RATE_LIMIT_WAIT)
    assert ntfy.answers == [200, 200, 429] and len(ntfy.messages) == 2


async def test_a_refused_event_is_named(ntfy: FakeNtfy, client: httpx.AsyncClient) -> None:
    ntfy.script = lambda body: (
        Scripted(400, {"code": 40000, "http": 400, "error": "invalid request"})
        if (body and body["priority"] == 5)
        else None
    )
    with pytest.raises(Rejected) as info:
        await ntfy_sink(ntfy, client).send([stored(d) for d in LIFECYCLE])
    assert (info.value.accepted, info.value.status) == (1, 400)
    assert "invalid request" in str(info.value)


async def test_timeouts_and_a_dead_server(ntfy: FakeNtfy, client: httpx.AsyncClient) -> None:
    ntfy.script = lambda body: Scripted(delay=2.0) if body and body["priority"] == 2 else None
    with pytest.raises(SendTimeout) as info:
        await ntfy_sink(ntfy, client, timeout=0.2).send([stored(d) for d in LIFECYCLE])
    assert info.value.accepted == 2
    dead = FakeNtfy()
    await dead.start()
    url = dead.url
    await dead.stop()
    sink = NtfySink(ntfy_config(url), client, None)
    with pytest.raises(RetryLater, match="ConnectError") as refused:
        await sink.send([stored(LIFECYCLE[0])])
    assert refused.value.accepted == 0
