"""The HTTP sink and the delivery loop, against the real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tenacity import AsyncRetrying, RetryCallState

from agent.demo.receiver import Batch, Receiver, Reply
from agent.errors import ConfigError, DeliveryError, EndpointRefused, Rejected, RetryLater
from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.alertlog import cloudevent
from agent.pipeline.delivery import Delivery, RetryAfterWait
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.sinks.http import (
    CONTENT_TYPE,
    MAX_RETRY_AFTER,
    HttpSink,
    HttpSinkConfig,
    classify,
    make_client,
    parse_retry_after,
    read_token,
)
from agent.sinks.routing import described

T = TypeVar("T")
NOW = 1_700_000_000.0


# -- helpers -----------------------------------------------------------------------------------


class Watch:
    """Something to await instead of sleeping: poked whenever the watched thing may have changed."""

    def __init__(self) -> None:
        self.changed = asyncio.Condition()

    async def poke(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(predicate)


class WatchedOutbox(AsyncOutbox):
    """An AsyncOutbox that pokes a Watch after every call (pending, settle, ...)."""

    def __init__(self, outbox: Outbox, watch: Watch) -> None:
        super().__init__(outbox)
        self.watch = watch

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await super().call(fn, *args)
        finally:
            await self.watch.poke()


class Probe:
    """Wraps a sink and records every outcome of ``send``."""

    def __init__(self, sink: HttpSink, watch: Watch) -> None:
        self.sink = sink
        self.id = sink.id
        self.watch = watch
        self.outcomes: list[DeliveryError | None] = []
        self.spans: list[tuple[float, float]] = []  # (start, end) of every send, monotonic

    @property
    def failures(self) -> list[RetryLater]:
        return [o for o in self.outcomes if isinstance(o, RetryLater)]

    async def send(self, events: Sequence[StoredEvent]) -> None:
        started = time.monotonic()
        try:
            await self.sink.send(events)
        except DeliveryError as exc:
            self.outcomes.append(exc)
            raise
        else:
            self.outcomes.append(None)
        finally:
            self.spans.append((started, time.monotonic()))
            await self.watch.poke()


def transition(n: int) -> Transition:
    return Transition(
        "press-1", f"r{n}", "wear", TransitionKind.RAISED, Severity.WARNING, 90.0 + n, 80.0, f"wear {n}", NOW + n
    )


async def fill(outbox: AsyncOutbox, n: int) -> list[StoredEvent]:
    """Commit ``n`` real CloudEvents, continuing the outbox's seq (as the outbox hands them back:
    described, with their type, subject and machine)."""
    base = await outbox.call(outbox.sync.last_seq)
    events = []
    for seq in range(base + 1, base + n + 1):
        body = cloudevent(transition(seq - base), seq=seq, event_id=f"ev-{seq}", gateway="gw", site="lab")
        events.append(described(StoredEvent(seq, f"ev-{seq}", Severity.WARNING, json.dumps(body).encode())))
    await outbox.call(outbox.sync.append, events, {})
    return events


def sink_config(url: str, **kw: Any) -> HttpSinkConfig:
    return HttpSinkConfig.model_validate({"id": "up", "kind": "http", "url": url, "timeout": "2s", **kw})


def ids(events: Sequence[StoredEvent] | Batch) -> list[str]:
    return [e.id if isinstance(e, StoredEvent) else e["id"] for e in events]


@contextlib.asynccontextmanager
async def delivering(delivery: Delivery) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(delivery.run(), name="delivery")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises anything that crashed the loop


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
async def outbox(tmp_path: Path, watch: Watch) -> AsyncIterator[WatchedOutbox]:
    ob = WatchedOutbox(Outbox(tmp_path / "outbox.db"), watch)
    async with ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        yield ob


@contextlib.asynccontextmanager
async def http_delivery(
    url: str, outbox: AsyncOutbox, watch: Watch, *, batch_size: int = 4, **cfg: Any
) -> AsyncIterator[tuple[Delivery, Probe]]:
    config = sink_config(url, **cfg)
    async with make_client(config) as client:
        probe = Probe(HttpSink(config, client, token=None), watch)
        yield Delivery(probe, outbox, batch_size=batch_size, retry_max=0.2), probe


async def down_receiver(respond: Callable[[Batch, dict[str, str]], Reply] | None = None) -> Receiver:
    """A receiver with a known port that is not listening (yet)."""
    r = Receiver(respond) if respond else Receiver()
    await r.start()
    await r.stop()
    return r


def dead_letters(outbox: AsyncOutbox) -> list[tuple[Any, ...]]:
    return outbox.sync.db.execute("SELECT sink, seq, id, reason FROM dead_letters ORDER BY seq").fetchall()


# -- classify / parse_retry_after --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, None),
        (202, None),
        (204, None),
        (408, RetryLater),
        (429, RetryLater),
        (500, RetryLater),
        (502, RetryLater),
        (503, RetryLater),
        (301, RetryLater),
        (100, RetryLater),
        (400, Rejected),  # only 400 and 422 refuse the events themselves
        (422, Rejected),
        (413, Rejected),  # too large: smaller batches
        (401, EndpointRefused),  # the gateway's credentials are wrong, not the events
        (403, EndpointRefused),
        (404, EndpointRefused),  # a mistyped path, an ingress route missing during a deploy
        (405, EndpointRefused),
        (410, EndpointRefused),
        (415, EndpointRefused),
        (418, EndpointRefused),
        (451, EndpointRefused),
    ],
)
def test_classify(status: int, outcome: type[DeliveryError] | None) -> None:
    if outcome is None:
        classify(status, {}, NOW)
        return
    with pytest.raises(outcome) as info:
        classify(status, {}, NOW)
    assert str(status) in str(info.value)
    if isinstance(info.value, Rejected | EndpointRefused):
        assert info.value.status == status
    assert isinstance(info.value, Rejected) != isinstance(info.value, RetryLater)  # set aside, or wait
    if isinstance(info.value, RetryLater):
        assert info.value.retry_after is None


def test_classify_carries_retry_after() -> None:
    with pytest.raises(RetryLater) as info:
        classify(429, httpx.Headers({"Retry-After": "7"}), NOW)
    assert info.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 12 ", 12.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("99999999", MAX_RETRY_AFTER),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("soon", None),
        ("Mon, 99 Foo 2024", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


# -- HttpSink against the real receiver --------------------------------------------------------


async def test_sink_posts_a_cloudevents_batch_with_bearer_token(receiver: Receiver, outbox: AsyncOutbox) -> None:
    events = await fill(outbox, 3)
    config = sink_config(receiver.url)
    async with make_client(config) as client:
        sink = HttpSink(config, client, token="s3cret-t0ken")
        await sink.send(events)
        assert "s3cret-t0ken" not in repr(sink) and "s3cret-t0ken" not in str(sink)
        assert "up" in repr(sink)
    assert len(receiver.requests) == 1
    headers, batch = receiver.requests[0]
    assert headers["content-type"] == CONTENT_TYPE
    assert headers["authorization"] == "Bearer s3cret-t0ken"
    assert batch == [json.loads(e.body) for e in events]  # a JSON array of the stored events, oldest first
    assert receiver.events == batch


async def test_sink_without_token_sends_no_authorization(receiver: Receiver, outbox: AsyncOutbox) -> None:
    events = await fill(outbox, 1)
    config = sink_config(receiver.url)
    async with make_client(config) as client:
        await HttpSink(config, client, token=None).send(events)
    headers, _ = receiver.requests[0]
    assert "authorization" not in headers


async def test_sink_maps_receiver_answers(outbox: AsyncOutbox) -> None:
    events = await fill(outbox, 2)
    release = asyncio.Event()

    async def hang(batch: Batch, headers: dict[str, str]) -> Reply:
        await release.wait()
        return Reply(200)

    replies: list[Any] = [Reply(503, {"Retry-After": "3"}), Reply(429), Reply(422), hang]

    def respond(batch: Batch, headers: dict[str, str]) -> Reply | Awaitable[Reply]:
        reply = replies.pop(0)
        return reply if isinstance(reply, Reply) else reply(batch, headers)

    async with Receiver(respond) as r:
        config = sink_config(r.url, timeout="200ms")
        async with make_client(config) as client:
            sink = HttpSink(config, client, token=None)
            with pytest.raises(RetryLater) as later:
                await sink.send(events)
            assert later.value.retry_after == 3.0
            with pytest.raises(RetryLater, match="429"):
                await sink.send(events)
            with pytest.raises(Rejected) as refused:
                await sink.send(events)
            assert refused.value.status == 422
            with pytest.raises(RetryLater, match="timeout"):
                await sink.send(events)
            assert r.events == []  # nothing was accepted in time
            release.set()
            await r.wait_for(lambda got: len(got) == 2, within=2)  # the hung handler ends, it did not crash
    assert len(r.requests) == 4
    async with make_client(config) as client:  # nobody listening any more
        with pytest.raises(RetryLater, match="ConnectError"):
            await HttpSink(config, client, token=None).send(events)


# -- read_token --------------------------------------------------------------------------------


def test_read_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDON_TEST_TOKEN", "tok-env\n")
    assert read_token(sink_config("http://x/", token_env="ANDON_TEST_TOKEN"), 0) == "tok-env"


def test_read_token_missing_env_names_the_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANDON_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"sinks\[3\]\.token_env.*ANDON_TEST_TOKEN"):
        read_token(sink_config("http://x/", token_env="ANDON_TEST_TOKEN"), 3)
    monkeypatch.setenv("ANDON_TEST_TOKEN", "")
    with pytest.raises(ConfigError, match=r"sinks\[1\]"):
        read_token(sink_config("http://x/", token_env="ANDON_TEST_TOKEN"), 1)


def test_read_token_from_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-file\n")
    assert read_token(sink_config("http://x/", token_file=str(token_file)), 0) == "tok-file"
    token_file.write_text("  \n")
    with pytest.raises(ConfigError, match=r"sinks\[2\]\.token_file.*empty"):
        read_token(sink_config("http://x/", token_file=str(token_file)), 2)
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.token_file.*cannot read"):
        read_token(sink_config("http://x/", token_file=str(tmp_path / "nope")), 0)
    assert read_token(sink_config("http://x/"), 0) is None


# -- the retry decision (unit, MockTransport) --------------------------------------------------


def test_retry_wait_is_capped_but_never_below_retry_after() -> None:
    wait = RetryAfterWait(0.2)
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.set_exception((RetryLater, RetryLater("HTTP 503"), None))
    assert 0 < wait(state) <= 0.2
    state.set_exception((RetryLater, RetryLater("HTTP 503", 1.5), None))
    assert wait(state) == 1.5
    state.attempt_number = 30  # exponential, but capped
    state.set_exception((RetryLater, RetryLater("HTTP 503"), None))
    assert wait(state) <= 0.2


async def test_delivery_retries_transient_failures_mock_transport(outbox: WatchedOutbox, watch: Watch) -> None:
    answers: list[Callable[[httpx.Request], httpx.Response]] = [
        lambda r: httpx.Response(503),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
        lambda r: httpx.Response(429, headers={"Retry-After": "0"}),
    ]
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(ids(json.loads(request.content)))
        return answers.pop(0)(request) if answers else httpx.Response(204)

    events = await fill(outbox, 3)
    config = sink_config("https://upstream.test/alerts")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        probe = Probe(HttpSink(config, client, token=None), watch)
        delivery = Delivery(probe, outbox, batch_size=10, retry_max=0.05)
        async with delivering(delivery):
            await watch.until(lambda: delivery.delivered == 3)
    assert seen == [ids(events)] * 4  # the same batch, the same ids, every time
    assert delivery.failures == 3 and delivery.rejected == 0


# -- Delivery against the real receiver --------------------------------------------------------


async def test_upstream_down_then_up_loses_nothing_and_keeps_order(
    outbox: WatchedOutbox, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="andon.delivery")
    busy = [Reply(503), Reply(503)]
    r = await down_receiver(lambda batch, headers: busy.pop(0) if busy else Reply(200))
    events = await fill(outbox, 10)
    try:
        async with http_delivery(r.url, outbox, watch) as (delivery, probe), delivering(delivery):
            await watch.until(lambda: len(probe.failures) >= 2)  # connection refused, twice
            assert all("ConnectError" in str(f) for f in probe.failures)
            events += await fill(outbox, 5)  # more arrive while the upstream is down
            delivery.wake()
            await r.start()  # up again, on the same port, but busy for two requests
            await r.wait_for(lambda got: len(got) >= 15, within=5)
            await watch.until(lambda: delivery.delivered == 15)
            assert await outbox.call(outbox.sync.depth, "up") == 0
    finally:
        await r.stop()
    assert ids(r.events) == ids(events)  # all of them, once, in seq order
    assert [e["data"]["seq"] for e in r.events] == sorted(e.seq for e in events)
    assert sum(1 for f in probe.failures if "503" in str(f)) == 2
    assert delivery.failures == len(probe.failures) >= 4
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot deliver" in errors[0].getMessage()  # once, not per retry
    assert any("delivering again" in rec.getMessage() for rec in caplog.records)


async def test_one_refused_event_is_set_aside_and_the_rest_go_on(outbox: WatchedOutbox, watch: Watch) -> None:
    events = await fill(outbox, 10)
    bad = events[5]

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(400) if bad.id in ids(batch) else Reply(200)

    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, batch_size=8) as (delivery, _),
        delivering(delivery),
    ):
        await watch.until(lambda: delivery.delivered + delivery.rejected == 10)
        events += await fill(outbox, 2)  # the queue is not blocked
        delivery.wake()
        await watch.until(lambda: delivery.delivered == 11)
    assert ids(r.events) == [e.id for e in events if e is not bad]
    assert delivery.rejected == 1
    assert dead_letters(outbox) == [("up", bad.seq, bad.id, "HTTP 400")]
    stats = await outbox.call(outbox.sync.stats)
    assert stats.dead_letters == 1 and stats.events == 0


async def test_retry_after_is_honoured(outbox: WatchedOutbox, watch: Watch) -> None:
    times: list[float] = []

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        times.append(time.monotonic())
        return Reply(503, {"Retry-After": "1"}) if len(times) == 1 else Reply(200)

    events = await fill(outbox, 3)
    async with Receiver(respond) as r, http_delivery(r.url, outbox, watch) as (delivery, probe), delivering(delivery):
        await r.wait_for(lambda got: len(got) == 3, within=5)
    assert ids(r.events) == ids(events)
    assert len(times) == 2
    assert times[1] - times[0] >= 0.9  # not the 0.2 s backoff cap
    assert times[1] - times[0] < 2.0
    assert probe.failures[0].retry_after == 1.0


async def test_hanging_upstream_times_out_and_is_retried(outbox: WatchedOutbox, watch: Watch) -> None:
    requests = 0

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        nonlocal requests
        requests += 1
        return Reply(200, delay=0.8) if requests == 1 else Reply(200)  # answers long after the client gave up

    events = await fill(outbox, 6)
    first = events[:4]
    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, timeout="300ms") as (delivery, probe),
        delivering(delivery),
    ):
        await watch.until(lambda: delivery.delivered == 6)
        assert [str(f).split(" (")[0] for f in probe.failures] == ["timeout"]
        assert delivery.batch_size == 2  # a whole batch timed out: maybe too large for a slow link
        # the hung request finally "succeeds" on the receiver's side: only that batch arrives twice
        await r.wait_for(lambda got: len(got) == 6 + len(first), within=3)
    got = ids(r.events)
    assert list(dict.fromkeys(got)) == ids(events)  # first arrivals in seq order, nothing lost
    assert sorted(got) == sorted(ids(events) + ids(first))
    by_id = [e for e in r.events if e["id"] == first[0].id]
    assert by_id[0] == by_id[1]  # a redelivery is the same event, same id


async def test_flush_with_upstream_down_returns_promptly_and_keeps_events(
    outbox: WatchedOutbox, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    r = await down_receiver()
    events = await fill(outbox, 5)
    async with http_delivery(r.url, outbox, watch) as (delivery, probe):
        started = time.monotonic()
        await asyncio.wait_for(delivery.flush(), 2.0)
        assert time.monotonic() - started < 1.0
    assert len(probe.outcomes) == 1  # one try, no retries
    assert await outbox.call(outbox.sync.pending, "up", 10) == events
    assert await outbox.call(outbox.sync.depth, "up") == 5
    assert any("5 events stay in the outbox" in rec.getMessage() for rec in caplog.records)


async def test_flush_with_upstream_up_delivers_everything(outbox: WatchedOutbox, watch: Watch) -> None:
    events = await fill(outbox, 9)

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(422) if events[0].id in ids(batch) else Reply(204)

    async with Receiver(respond) as r, http_delivery(r.url, outbox, watch, batch_size=4) as (delivery, _):
        await delivery.flush()
    assert ids(r.events) == ids(events[1:])
    assert dead_letters(outbox) == [("up", events[0].seq, events[0].id, "HTTP 422")]
    assert await outbox.call(outbox.sync.depth) == 0


async def test_accepted_part_of_a_split_batch_is_not_sent_again(outbox: WatchedOutbox, watch: Watch) -> None:
    events = await fill(outbox, 4)
    bad, flaky = events[1], events[3]
    failures = {"left": 2}

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        if bad.id in ids(batch):
            return Reply(400)
        if flaky.id in ids(batch) and failures["left"]:
            failures["left"] -= 1
            return Reply(503)  # the second half has to wait for the upstream
        return Reply(200)

    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, batch_size=4) as (delivery, _),
        delivering(delivery),
    ):
        await watch.until(lambda: delivery.delivered + delivery.rejected == 4)
    assert ids(r.events) == [events[0].id, events[2].id, events[3].id]  # each exactly once, in order
    assert dead_letters(outbox) == [("up", bad.seq, bad.id, "HTTP 400")]


def test_read_token_blank_env_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDON_TEST_TOKEN", "   ")
    with pytest.raises(ConfigError, match=r"sinks\[0\].token_env: environment variable ANDON_TEST_TOKEN"):
        read_token(sink_config("http://127.0.0.1:1/x", token_env="ANDON_TEST_TOKEN"), 0)


# -- batch size, linger, the dropped-events notice ---------------------------------------------


async def test_413_halves_the_batch_size_then_it_recovers(
    outbox: WatchedOutbox, watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.pipeline.delivery.RECOVER_AFTER", 3)
    limit = {"n": 3}
    sizes: list[int] = []

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        sizes.append(len(batch))
        return Reply(413) if len(batch) > limit["n"] else Reply(200)

    events = await fill(outbox, 40)
    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, batch_size=8) as (delivery, _),
    ):
        async with delivering(delivery):
            await watch.until(lambda: delivery.delivered == 40)
        assert ids(r.events) == ids(events)  # each once, in order; nothing set aside
        assert delivery.rejected == 0 and dead_letters(outbox) == []
        assert sizes[:3] == [8, 4, 2]  # 8 refused, its halves split again: the size is now 2
        assert 4 in sizes[4:]  # ... and grew back after 3 good requests (to be refused and halved again)
        stats = delivery.stats()
        assert stats.max_batch_size == 8 and stats.batch_size in (2, 4) and stats.sink == "up"
        limit["n"] = 100  # the upstream takes anything again: the size climbs back to the maximum
        await fill(outbox, 60)
        async with delivering(delivery):
            await watch.until(lambda: delivery.delivered == 100)
        assert delivery.batch_size == 8


async def test_one_event_too_large_alone_becomes_a_dead_letter(outbox: WatchedOutbox, watch: Watch) -> None:
    events = await fill(outbox, 6)
    huge = events[2]

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(413) if huge.id in ids(batch) else Reply(200)

    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, batch_size=4) as (delivery, _),
        delivering(delivery),
    ):
        await watch.until(lambda: delivery.delivered + delivery.rejected == 6)
    assert ids(r.events) == [e.id for e in events if e is not huge]
    assert dead_letters(outbox) == [("up", huge.seq, huge.id, "HTTP 413")]


async def test_linger_sends_a_lone_event_at_once_and_groups_a_burst(outbox: WatchedOutbox, watch: Watch) -> None:
    arrivals: list[float] = []

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        arrivals.append(time.monotonic())
        return Reply(200)

    async with Receiver(respond) as r:
        config = sink_config(r.url)
        async with make_client(config) as client:
            probe = Probe(HttpSink(config, client, token=None), watch)
            delivery = Delivery(probe, outbox, batch_size=50, retry_max=0.2, linger=0.4)
            async with delivering(delivery):
                committed = time.monotonic()
                await fill(outbox, 1)
                delivery.wake()
                await watch.until(lambda: delivery.delivered == 1)
                assert arrivals[0] - committed < 0.3  # after a quiet spell: at once, no linger
                for _ in range(3):  # a burst right after it: these wait for the linger and go together
                    await fill(outbox, 2)
                    delivery.wake()
                await watch.until(lambda: delivery.delivered == 7)
                assert [len(b) for _, b in r.requests] == [1, 6]
                assert arrivals[1] - arrivals[0] >= 0.35
                await fill(outbox, 120)  # a backlog goes in full batches, back to back
                delivery.wake()
                await watch.until(lambda: delivery.delivered == 127)
                assert [len(b) for _, b in r.requests][2:4] == [50, 50]


async def test_dropped_events_are_reported_once_the_link_is_back(tmp_path: Path, watch: Watch) -> None:
    from agent.pipeline.alertlog import AlertLog

    async with WatchedOutbox(Outbox(tmp_path / "small.db", max_events=100), watch) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        r = await down_receiver()
        try:
            async with http_delivery(r.url, ob, watch, batch_size=50) as (delivery, probe):
                log = AlertLog(ob, gateway="gw", site=None, on_commit=[delivery.wake])
                await log.load()
                delivery.report_drops = log.report_drops
                async with delivering(delivery):
                    committed = await log.commit([transition(n) for n in range(1, 131)])  # 30 dropped
                    await watch.until(lambda: len(probe.failures) >= 1)  # the link is down
                    assert ob.sync.unreported_drops == 30
                    await r.start()
                    await watch.until(lambda: any(e["type"] == "andon.outbox.dropped" for e in r.events))
                    await watch.until(lambda: delivery.delivered == 101)
        finally:
            await r.stop()
    kept = [e for e in r.events if e["type"] != "andon.outbox.dropped"]
    assert [e["data"]["seq"] for e in kept] == [e.seq for e in committed[30:]]  # the oldest 30 went
    notice = r.events[-1]
    assert notice["type"] == "andon.outbox.dropped" and notice["subject"] == "gw/outbox"
    assert notice["data"]["dropped"] == 30 and notice["data"]["seq"] == committed[-1].seq + 1
    assert notice["data"]["first_seq"] == committed[0].seq and notice["data"]["last_seq"] == committed[29].seq
    assert sum(e["type"] == "andon.outbox.dropped" for e in r.events) == 1


# -- the endpoint's fault, or the events'? (issue 12, defect 1) ---------------------------------


def attempts(r: Receiver, batch_size: int) -> list[list[int]]:
    """The requests the receiver got, grouped per attempt (an attempt starts with a whole batch)."""
    grouped: list[list[int]] = []
    for _, batch in r.requests:
        if len(batch) == batch_size or not grouped:
            grouped.append([])
        grouped[-1].append(len(batch))
    return grouped


async def test_a_404_sets_nothing_aside_and_the_backlog_waits(
    outbox: WatchedOutbox, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="andon.delivery")
    answer = {"status": 404}
    events = await fill(outbox, 2000)
    async with (
        Receiver(lambda batch, headers: Reply(answer["status"])) as r,
        http_delivery(r.url, outbox, watch, batch_size=500) as (delivery, probe),
        delivering(delivery),
    ):
        await watch.until(lambda: len(probe.outcomes) >= 4)
        assert delivery.stats().refused == 404 and not delivery.stats().held
        assert [len(b) for _, b in r.requests][:4] == [500] * 4  # the same head batch again: never split
        assert dead_letters(outbox) == [] and await outbox.call(outbox.sync.depth, "up") == 2000
        assert delivery.rejected == 0 and delivery.failures >= 3
        answer["status"] = 200  # the ingress route is back
        await watch.until(lambda: delivery.delivered == 2000)
        assert delivery.stats().refused is None and delivery.stats().failing is False
    assert ids(r.events) == ids(events)  # all of them, once, in order
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "HTTP 404" in errors[0] and "nothing is set aside" in errors[0]
    assert any("delivering again" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("status", [400, 422])
async def test_every_event_refused_alike_is_the_endpoints_fault_and_costs_few_requests(
    outbox: WatchedOutbox, watch: Watch, status: int
) -> None:
    answer = {"status": status}
    events = await fill(outbox, 2000)
    async with (
        Receiver(lambda batch, headers: Reply(answer["status"])) as r,
        http_delivery(r.url, outbox, watch, batch_size=500) as (delivery, _),
    ):
        async with delivering(delivery):
            await watch.until(lambda: len(attempts(r, 500)) >= 3)  # two whole attempts, a third begun
        tried = attempts(r, 500)[:2]
        assert all(len(a) <= 2 * 9 + 4 for a in tried), tried  # about 2 log2(500), not the 999 of a full split
        assert dead_letters(outbox) == [] and delivery.rejected == 0
        assert await outbox.call(outbox.sync.depth, "up") == 2000
        assert delivery.stats().refused == status
        answer["status"] = 200
        async with delivering(delivery):
            await watch.until(lambda: delivery.delivered == 2000)
    assert list(dict.fromkeys(ids(r.events))) == ids(events) == ids(r.events)  # in order, none twice


async def test_refused_events_are_found_wherever_they_are(outbox: WatchedOutbox, watch: Watch) -> None:
    """Bad events at the head (three in a row), in the middle and at the end are set aside; the rest
    goes, once, in order: the endpoint takes events, so those refusals are about the events."""
    events = await fill(outbox, 64)
    bad = {events[i].id for i in (0, 1, 2, 20, 45, 63)}

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(422) if bad & set(ids(batch)) else Reply(200)

    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, batch_size=64) as (delivery, _),
        delivering(delivery),
    ):
        await watch.until(lambda: delivery.delivered + delivery.rejected == 64)
    assert ids(r.events) == [e.id for e in events if e.id not in bad]
    assert {d[2] for d in dead_letters(outbox)} == bad
    assert delivery.stats().refused is None


async def test_a_lone_refused_event_waits_until_the_endpoint_shows_it_takes_others(
    outbox: WatchedOutbox, watch: Watch
) -> None:
    (lone,) = await fill(outbox, 1)

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(400) if lone.id in ids(batch) else Reply(200)

    async with (
        Receiver(respond) as r,
        http_delivery(r.url, outbox, watch, batch_size=8) as (delivery, probe),
        delivering(delivery),
    ):
        await watch.until(lambda: len(probe.outcomes) >= 3)  # alone, it cannot tell: it waits
        assert dead_letters(outbox) == [] and delivery.stats().refused == 400
        later = await fill(outbox, 2)
        delivery.wake()
        await watch.until(lambda: delivery.delivered == 2)
    assert ids(r.events) == ids(later)
    assert dead_letters(outbox) == [("up", lone.seq, lone.id, "HTTP 400")]


async def test_dead_letters_at_the_cap_hold_the_queue_and_none_is_deleted(
    tmp_path: Path, watch: Watch, caplog: pytest.LogCaptureFixture
) -> None:
    async with WatchedOutbox(Outbox(tmp_path / "cap.db", max_dead_letters=2), watch) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        events = await fill(ob, 12)
        bad = [events[i] for i in (1, 5, 9)]

        def respond(batch: Batch, headers: dict[str, str]) -> Reply:
            return Reply(400) if {e.id for e in bad} & set(ids(batch)) else Reply(200)

        async with (
            Receiver(respond) as r,
            http_delivery(r.url, ob, watch, batch_size=4) as (delivery, _),
            delivering(delivery),
        ):
            await watch.until(lambda: delivery.stats().held)
            held_since = delivery.failures
            await watch.until(lambda: delivery.failures >= held_since + 3)  # tried again, still held
            assert delivery.stats().held and delivery.stats().refused is None
            assert [d[1] for d in dead_letters(ob)] == [bad[0].seq, bad[1].seq]  # kept, none deleted
            assert ids(r.events) == [e.id for e in events[:9] if e not in bad]  # held at the third bad one
            assert await ob.call(ob.sync.pending, "up", 1) == [bad[2]]
            assert delivery.stats().refused is None
            ob.sync.db.execute("DELETE FROM dead_letters WHERE seq = ?", (bad[0].seq,))  # what `outbox purge` does
            await watch.until(lambda: delivery.delivered + delivery.rejected == 12)
            assert not delivery.stats().held
        assert [d[1] for d in dead_letters(ob)] == [bad[1].seq, bad[2].seq]
        assert ids(r.events) == [e.id for e in events if e not in bad]
    held = [rec.getMessage() for rec in caplog.records if "held" in rec.getMessage()]
    assert len([m for m in held if "max_dead_letters" in m]) == 1  # said once, at ERROR


# -- timeouts that say nothing about the batch (issue 12, defect 5) -----------------------------


@contextlib.contextmanager
def never_accepting() -> Iterator[str]:
    """A listening socket whose accept queue is full: a connect to it never completes (no SYN-ACK)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield f"http://127.0.0.1:{port}/alerts"
    finally:
        for s in [*fillers, server]:
            s.close()


async def test_a_connect_timeout_keeps_the_batch_size_and_backs_off(outbox: WatchedOutbox, watch: Watch) -> None:
    await fill(outbox, 20)
    with never_accepting() as url:
        async with (
            http_delivery(url, outbox, watch, batch_size=8, timeout="300ms") as (delivery, probe),
            delivering(delivery),
        ):
            await watch.until(lambda: len(probe.outcomes) >= 4)
    assert all(o is not None and "connect" in str(o) for o in probe.outcomes), probe.outcomes
    assert delivery.batch_size == 8  # an unreachable upstream says nothing about the batch's size
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(probe.spans)]
    assert min(gaps) >= 0.15, gaps  # backoff (retry_max 0.2 s) between the attempts
    assert await outbox.call(outbox.sync.depth, "up") == 20


# -- an unexpected error in a sink (issue 12, defect 4) -----------------------------------------


class Surprising:
    """A sink that raises an error no sink should (a bug, a library's surprise) a few times."""

    def __init__(self, sink: Probe, times: int) -> None:
        self.id = sink.id
        self.sink = sink
        self.left = times

    async def send(self, events: Sequence[StoredEvent]) -> None:
        if self.left:
            self.left -= 1
            await self.sink.watch.poke()
            raise KeyError("surprise")
        await self.sink.send(events)


async def test_an_unexpected_error_in_a_sink_is_logged_once_and_the_sink_retries(
    outbox: WatchedOutbox, watch: Watch, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    events = await fill(outbox, 5)
    config = sink_config(receiver.url)
    async with make_client(config) as client:
        sink = Surprising(Probe(HttpSink(config, client, token=None), watch), times=3)
        delivery = Delivery(sink, outbox, batch_size=10, retry_max=0.05)
        async with delivering(delivery) as task:
            await watch.until(lambda: delivery.delivered == 5)
            assert not task.done()
    assert ids(receiver.events) == ids(events)
    assert delivery.failures == 3
    tracebacks = [rec for rec in caplog.records if rec.exc_info and rec.levelno >= logging.ERROR]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info is not None
    assert isinstance(tracebacks[0].exc_info[1], KeyError)
