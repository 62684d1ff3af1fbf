"""The HTTP sink and the delivery loop, against the real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tenacity import AsyncRetrying, RetryCallState

from agent.demo.receiver import Batch, Receiver, Reply
from agent.errors import ConfigError, DeliveryError, Rejected, RetryLater
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

    @property
    def failures(self) -> list[RetryLater]:
        return [o for o in self.outcomes if isinstance(o, RetryLater)]

    async def send(self, events: Sequence[StoredEvent]) -> None:
        try:
            await self.sink.send(events)
        except DeliveryError as exc:
            self.outcomes.append(exc)
            raise
        else:
            self.outcomes.append(None)
        finally:
            await self.watch.poke()


def transition(n: int) -> Transition:
    return Transition(
        "press-1", f"r{n}", "wear", TransitionKind.RAISED, Severity.WARNING, 90.0 + n, 80.0, f"wear {n}", NOW + n
    )


async def fill(outbox: AsyncOutbox, n: int) -> list[StoredEvent]:
    """Commit ``n`` real CloudEvents, continuing the outbox's seq."""
    base = await outbox.call(outbox.sync.last_seq)
    events = []
    for seq in range(base + 1, base + n + 1):
        body = cloudevent(transition(seq - base), seq=seq, event_id=f"ev-{seq}", gateway="gw", site="lab")
        events.append(StoredEvent(seq, f"ev-{seq}", Severity.WARNING, json.dumps(body).encode()))
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
        (400, Rejected),
        (401, RetryLater),  # the gateway's credentials are wrong, not the events
        (403, RetryLater),
        (404, Rejected),
        (413, Rejected),
        (422, Rejected),
    ],
)
def test_classify(status: int, outcome: type[DeliveryError] | None) -> None:
    if outcome is None:
        classify(status, {}, NOW)
        return
    with pytest.raises(outcome) as info:
        classify(status, {}, NOW)
    assert str(status) in str(info.value)
    if isinstance(info.value, Rejected):
        assert info.value.status == status
    else:
        assert isinstance(info.value, RetryLater) and info.value.retry_after is None


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
