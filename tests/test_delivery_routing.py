"""Delivery with routing and partial acceptance: a real outbox file, the ntfy and PagerDuty sinks
against their fake services, and the http sink against the real receiver, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from agent.demo.receiver import Receiver
from agent.errors import RetryLater
from agent.model import Severity, StoredEvent
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.sinks.base import Sink
from agent.sinks.http import HttpSink, HttpSinkConfig
from agent.sinks.ntfy import NtfySink, NtfySinkConfig
from agent.sinks.pagerduty import PagerDutySink, PagerDutySinkConfig
from agent.sinks.routing import Route
from tests.fake_services import FakeNtfy, FakePagerDuty, Scripted
from tests.people_events import GATEWAY, ROUTING_KEY, alert_doc, stored
from tests.waiting import Changes

T = TypeVar("T")

C, W = Severity.CRITICAL, Severity.WARNING
SINKS = ["phones", "oncall", "up"]


class WatchedOutbox(AsyncOutbox):
    """An outbox whose every call (pending, settle, ...) bumps ``changes``: tests await states, never sleep."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(outbox)
        self.changes = Changes()
        self.idle = False  # the last read of pending events found none: delivery has caught up

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            result = await super().call(fn, *args)
            if getattr(fn, "__name__", "") == "pending":
                self.idle = result == []
            return result
        finally:
            self.changes.bump()

    async def until(self, predicate: Callable[[], bool]) -> None:
        await self.changes.until(predicate)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[WatchedOutbox]:
    ob = WatchedOutbox(Outbox(tmp_path / "outbox.db"))
    async with ob:
        await ob.call(ob.sync.set_sinks, SINKS)
        yield ob


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


async def commit(outbox: AsyncOutbox, docs: Sequence[dict[str, Any]]) -> list[StoredEvent]:
    """Commit the events as the alert log does (bodies only: the outbox describes them)."""
    events = [StoredEvent(e.seq, e.id, e.severity, e.body) for e in map(stored, docs)]
    await outbox.call(outbox.sync.append, events, {})
    return events


@contextlib.asynccontextmanager
async def delivering(delivery: Delivery) -> AsyncIterator[Delivery]:
    task = asyncio.create_task(delivery.run())
    try:
        yield delivery
    finally:
        delivery.stop()
        async with asyncio.timeout(5):
            await task


def ntfy_sink(server: FakeNtfy, client: httpx.AsyncClient, rate_limit_wait: float = 5.0) -> NtfySink:
    cfg = NtfySinkConfig.model_validate({"id": "phones", "kind": "ntfy", "url": server.url, "topic": "plant-a"})
    return NtfySink(cfg, client, None, rate_limit_wait=rate_limit_wait)


def pd_sink(server: FakePagerDuty, client: httpx.AsyncClient) -> PagerDutySink:
    cfg = PagerDutySinkConfig.model_validate(
        {"id": "oncall", "kind": "pagerduty", "url": server.url, "routing_key_env": "PD_ROUTING_KEY"}
    )
    return PagerDutySink(cfg, client, ROUTING_KEY)


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [int(m["message"].split("#")[1]) for m in messages]


def numbered(n: int, start: int = 1) -> list[dict[str, Any]]:
    """``n`` events of ``n`` alerts, each message naming its seq (``... #<seq>``)."""
    return [alert_doc(s, rule=f"r{s}", message=f"event #{s}") for s in range(start, start + n)]


# -- partial acceptance ------------------------------------------------------------------------


async def test_a_rate_limited_backlog_arrives_once_and_in_order(
    outbox: WatchedOutbox, ntfy: FakeNtfy, client: httpx.AsyncClient
) -> None:
    """ntfy's bucket holds 3 and refills one every 50 ms: every event arrives exactly once, in order,
    and no event the server took is ever sent again."""
    ntfy.limit(burst=3, refill=0.05)
    await commit(outbox, numbered(12))
    sink = ntfy_sink(ntfy, client, rate_limit_wait=0.05)
    async with delivering(Delivery(sink, outbox, batch_size=500, retry_max=0.2, route=Route("phones"))) as d:
        await ntfy.wait_for(lambda: len(ntfy.messages) == 12)
    assert seqs(ntfy.messages) == list(range(1, 13))
    assert ntfy.answers.count(200) == 12 and 429 in ntfy.answers
    assert d.max_batch_size == NtfySink.max_batch  # one POST per event: small batches
    assert await outbox.call(outbox.sync.depth, "phones") == 0 and d.delivered == 12


async def test_a_refused_event_is_set_aside_without_a_split(
    outbox: WatchedOutbox, ntfy: FakeNtfy, client: httpx.AsyncClient
) -> None:
    ntfy.script = lambda body: (
        Scripted(400, {"code": 40000, "http": 400, "error": "invalid request"})
        if body and body["message"].endswith("#3")
        else None
    )
    await commit(outbox, numbered(6))
    async with delivering(Delivery(ntfy_sink(ntfy, client), outbox, batch_size=500, retry_max=0.2)) as d:
        await ntfy.wait_for(lambda: len(ntfy.messages) == 5)
        await outbox.until(lambda: d.rejected == 1)
    assert seqs(ntfy.messages) == [1, 2, 4, 5, 6]
    assert ntfy.answers == [200, 200, 400, 200, 200, 200]  # each event posted once: nothing bisected
    dead = outbox.sync.db.execute("SELECT sink, seq, reason FROM dead_letters").fetchall()
    assert dead == [("phones", 3, "HTTP 400: invalid request")]


async def test_a_503_spell_loses_nothing(
    outbox: WatchedOutbox, pagerduty: FakePagerDuty, client: httpx.AsyncClient
) -> None:
    down = {"on": True}
    pagerduty.script = lambda body: Scripted(503, {"status": "unavailable"}) if down["on"] else None
    docs = [alert_doc(1, "raised"), alert_doc(2, "updated", "warning"), alert_doc(3, "cleared")]
    await commit(outbox, docs)
    async with delivering(Delivery(pd_sink(pagerduty, client), outbox, batch_size=500, retry_max=0.05)) as d:
        await pagerduty.wait_for(lambda: pagerduty.answers.count(503) >= 3)
        assert d.stats().failing and "503" in (d.last_error or "")
        down["on"] = False
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 3)
    assert [e["event_action"] for e in pagerduty.events] == ["trigger", "trigger", "resolve"]
    assert not d.stats().failing and d.last_error is None


# -- routing -----------------------------------------------------------------------------------


async def test_a_critical_only_sink_gets_trigger_then_resolve(
    outbox: WatchedOutbox, pagerduty: FakePagerDuty, client: httpx.AsyncClient
) -> None:
    await commit(
        outbox,
        [
            alert_doc(1, "raised", "warning", rule="only-warning"),
            alert_doc(2, "cleared", "warning", rule="only-warning"),
            alert_doc(3, "raised", "warning"),
            alert_doc(4, "updated", "critical"),
            alert_doc(5, "cleared", "critical"),
        ],
    )
    route = Route("oncall", C, alerts_only=True)
    async with delivering(Delivery(pd_sink(pagerduty, client), outbox, batch_size=500, retry_max=0.1, route=route)):
        await outbox.until(lambda: outbox.idle and len(pagerduty.events) == 2)
    assert [(e["event_action"], e["dedup_key"]) for e in pagerduty.events] == [
        ("trigger", f"{GATEWAY}/press-1/tool1-wear"),
        ("resolve", f"{GATEWAY}/press-1/tool1-wear"),
    ]
    assert pagerduty.events[0]["payload"]["severity"] == "critical"
    assert outbox.sync.seen("oncall") == set()


async def test_what_a_sink_saw_survives_a_restart(
    outbox: WatchedOutbox, pagerduty: FakePagerDuty, client: httpx.AsyncClient
) -> None:
    route = Route("oncall", C, alerts_only=True)
    await commit(outbox, [alert_doc(1, "raised", "critical")])
    async with delivering(Delivery(pd_sink(pagerduty, client), outbox, batch_size=500, retry_max=0.1, route=route)):
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 1)
    assert outbox.sync.seen("oncall") == {"press-1/tool1-wear"}
    await commit(outbox, [alert_doc(2, "updated", "warning"), alert_doc(3, "cleared", "warning")])
    async with delivering(Delivery(pd_sink(pagerduty, client), outbox, batch_size=500, retry_max=0.1, route=route)):
        await pagerduty.wait_for(lambda: len(pagerduty.events) == 3)
    assert [(e["event_action"], e.get("payload", {}).get("severity")) for e in pagerduty.events] == [
        ("trigger", "critical"),
        ("trigger", "warning"),  # below the sink's level, but the sink saw the alert: it follows it to the end
        ("resolve", None),
    ]
    assert outbox.sync.seen("oncall") == set()


class LostAnswer:
    """Forwards to a real sink, but the first answer is lost (the upstream took the batch, the gateway
    never heard): delivery must send the same events, presented the same way, again."""

    def __init__(self, inner: Sink) -> None:
        self.inner, self.id = inner, inner.id
        self.seen_bodies: list[list[dict[str, Any]]] = []

    async def send(self, events: Sequence[StoredEvent]) -> None:
        self.seen_bodies.append([json.loads(e.body) for e in events])
        await self.inner.send(events)
        if len(self.seen_bodies) == 1:
            raise RetryLater("the answer was lost")


async def test_a_lost_answer_resends_the_same_presentation(outbox: WatchedOutbox, receiver: Receiver) -> None:
    await commit(outbox, [alert_doc(1, "raised", "warning"), alert_doc(2, "updated", "critical")])
    cfg = HttpSinkConfig.model_validate({"id": "up", "kind": "http", "url": receiver.url})
    async with httpx.AsyncClient() as client:
        sink = LostAnswer(HttpSink(cfg, client, token=None))
        route = Route("up", C)
        async with delivering(Delivery(sink, outbox, batch_size=500, retry_max=0.05, route=route)):
            await receiver.wait_for(lambda events: len(events) == 2)
    first, second = sink.seen_bodies
    assert first == second
    assert [(e["id"], e["type"], e["data"]["seq"]) for e in first] == [("ev-2", "andon.alert.raised", 2)]
    assert [e["id"] for e in receiver.events] == ["ev-2", "ev-2"]  # the one batch in flight, twice


async def test_events_a_kind_does_not_take_only_move_its_cursor(
    outbox: WatchedOutbox, ntfy: FakeNtfy, client: httpx.AsyncClient
) -> None:
    dropped = {
        "specversion": "1.0",
        "id": "ev-1",
        "type": "andon.outbox.dropped",
        "subject": f"{GATEWAY}/outbox",
        "data": {"seq": 1, "severity": "warning", "message": "dropped 3"},
    }
    await commit(outbox, [dropped, alert_doc(2, "raised", "info")])
    route = Route("phones", W, alerts_only=True)
    async with delivering(Delivery(ntfy_sink(ntfy, client), outbox, batch_size=500, retry_max=0.1, route=route)) as d:
        await outbox.until(lambda: outbox.idle)
    assert ntfy.answers == [] and d.delivered == 0 and d.last_success is None
    assert await outbox.call(outbox.sync.depth, "phones") == 0
