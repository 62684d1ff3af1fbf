"""Delivery: moves events from the outbox to one sink, oldest first, with retry and set-aside.

What a request's outcome means (the sink classifies it; README "Outbox and delivery"):

* accepted: the events are settled (the cursor moves past them).
* :class:`RetryLater` (408, 429, 5xx, timeouts, connection errors): the same events again later,
  capped exponential backoff with jitter, never sooner than the receiver's ``Retry-After``.
* :class:`EndpointRefused` (every other 4xx: 401, 403, 404, 405, 410, 415, ...): the endpoint or
  the credentials are wrong, not the events. Nothing is set aside; retried like RetryLater; the
  sink shows as refused (``refused`` in :class:`DeliveryStats`, so in /healthz and the metrics).
* :class:`Rejected` (400, 422; 413): the batch is split to find the refused events.

Splitting. The halves are sent depth first, oldest first, so what is accepted keeps ``seq`` order
and a part once accepted is never sent again. An event refused on its own is set aside as a dead
letter only when the same batch shows that the endpoint takes events (some part was accepted):
when every event is refused alike, the endpoint is at fault and the events wait
(:class:`EndpointRefused`). To tell without sending every event, a split stops once it has made
:func:`split_budget` requests (about 2 log2 of the batch) with none accepted: a refusal of
everything costs about 22 requests for 500 events, not 999. An event alone in its batch that is
refused therefore waits until another event shows that the endpoint takes events.

Dead letters are never deleted. A split sets aside at most :meth:`Outbox.dead_letter_room` events;
when the next refused one does not fit, everything before it is settled and the sink holds its
queue there (``held``; logged, in /healthz and the metrics), trying again with backoff until dead
letters are retried or purged (``andon-agent outbox``).

Batch size. Up to ``batch_size`` events go in one request. A 413 (payload too large) halves the
batch size (and splits the refused batch); so does a timeout of a whole batch once the request was
on its way (a slow link may never carry a large one in time; a timeout while connecting says
nothing about the size). After :data:`RECOVER_AFTER` good requests in a row the size doubles again,
up to ``batch_size``.

Linger. A backlog goes out in full batches, back to back. A batch that is not full goes out at once
when the sink has been idle for ``linger``; during a burst (the last request less than ``linger``
ago) it waits until ``linger`` has passed, so a trickle of events shares requests. A single new alert
after a quiet spell therefore goes out at once.

Routing. Each sink has a :class:`~agent.sinks.routing.Route` (``min_severity``, ``machines``,
the types its kind takes) and the set of alerts it has seen; each batch is planned with
:func:`~agent.sinks.routing.plan`. Skipped events only move the sink's cursor; an ``updated``
presented as ``raised`` changes its body's ``type``, never its ``id`` or ``seq``. The seen set is
stored by the same transaction that moves the cursor (:meth:`Outbox.settle`), so a crash between a
send and its settle sends the same presentation again.

Partial acceptance. A sink that sends one request per event says how many of a batch's first events
were accepted when it fails (``RetryLater.accepted``); those are settled at once and only the rest
is sent again. ``Rejected.accepted`` = n names the one refused event (``batch[n]``): it is refused
on its own (as above) and the rest go on, without a split. A sink may cap its batches (``max_batch``).

Drops. After a request succeeds (the link is up), if the outbox dropped events that were not yet
reported, ``report_drops`` is awaited (the runtime wires it to :meth:`AlertLog.report_drops`), which
commits one ``andon.outbox.dropped`` event saying how many (at most one a minute, should drops go on
while the link is up).

Failures are logged once at ERROR (again when their kind changes: transient, endpoint refused,
held), then quietly until delivery works again, which is logged. An error that is no
:class:`~agent.errors.AndonError` (a bug, a library's surprise) is logged with its traceback once,
counted as a failure and retried with backoff: it never ends the delivery task, so never the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type

from agent.errors import AndonError, EndpointRefused, OutboxError, Rejected, RetryLater
from agent.model import StoredEvent
from agent.ops.logs import Trouble
from agent.pipeline.outbox import AsyncOutbox
from agent.sinks.base import SendTimeout, Sink
from agent.sinks.routing import Route, Send, apply_changes, described, plan, present, seen_changes

log = logging.getLogger("andon.delivery")

PAYLOAD_TOO_LARGE = 413
RECOVER_AFTER = 20  # good requests in a row at a reduced batch size before it doubles again
NOTICE_INTERVAL = 60.0  # at most one dropped-events notice a minute, should drops go on with the link up


def split_budget(size: int) -> int:
    """Requests a split of ``size`` events may make with none accepted before the endpoint is blamed.

    Enough to walk down to the oldest event and find a few refused ones in a row at the head
    (2 log2 + 4), far fewer than the 2n - 1 requests of splitting everything.
    """
    return 2 * size.bit_length() + 4


class RetryAfterWait:
    """Capped exponential backoff with jitter, but at least the ``Retry-After`` (also a tenacity wait)."""

    def __init__(self, cap: float) -> None:
        self._cap = cap
        self._jitter = 0.5 if cap > 1 else cap / 2

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait before try ``attempt + 1`` after ``exc``."""
        delay = min(self._cap, 0.5 * 2.0 ** min(attempt - 1, 30) + random.uniform(0, self._jitter))
        if isinstance(exc, RetryLater) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    def __call__(self, state: RetryCallState) -> float:
        return self.delay(state.attempt_number, state.outcome.exception() if state.outcome else None)


class _Held(RetryLater):
    """The dead letters are at ``max_dead_letters``: the queue waits at a refused event."""


def _kind_of(exc: BaseException | None) -> str:
    """The kind of a failure, for the log: each kind is said at ERROR when it starts."""
    if isinstance(exc, EndpointRefused):
        return "refused"
    if isinstance(exc, _Held):
        return "held"
    return "failing" if isinstance(exc, AndonError) else "unexpected"


class _Stopping(Exception):
    """:meth:`Delivery.stop` was called while backing off."""


class _SplitEnds(Exception):
    """A split found no room for another dead letter, or spent its budget."""


Rejects = list[tuple[StoredEvent, str]]


@dataclass
class _Round:
    """One batch from the outbox on its way to the sink: what is accepted or set aside and not yet
    settled, and the highest seq the sink is done with so far (skipped events included)."""

    last_seq: int  # the batch's last seq: the cursor once the round is over
    done: list[Send] = field(default_factory=list)  # accepted, not yet settled
    rejected: Rejects = field(default_factory=list)  # set aside, not yet settled
    doubtful: Rejects = field(default_factory=list)  # refused alone while nothing was accepted yet
    accepted: bool = False  # some part was accepted: the endpoint takes events
    held_at: StoredEvent | None = None  # a refused event with no room left for it: the queue waits here

    def take(self, sends: Sequence[Send]) -> None:
        """``sends`` were accepted: so the endpoint takes events, and what it refused alone is bad."""
        self.done += sends
        if sends:
            self.accepted = True
            self.rejected += self.doubtful
            self.doubtful = []


@dataclass
class _Split:
    """What the split of one refused batch may still do."""

    room: int  # dead letters that may still be set aside
    budget: int  # requests it may still make while none is accepted
    refused: int = 0  # events refused alone so far


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """A snapshot of one sink's delivery counters (for metrics)."""

    sink: str
    delivered: int
    rejected: int  # set aside as dead letters
    failures: int  # failed requests that were retried
    batch_size: int  # the current one (halved after a 413 or a timeout)
    max_batch_size: int
    failing: bool
    last_error: str | None
    last_success: float | None  # wall clock
    refused: int | None = None  # the HTTP status while the endpoint refuses every request
    held: bool = False  # the queue waits: dead letters are at max_dead_letters


class Delivery:
    """One sink's delivery loop. Call :meth:`wake` after new events were committed.

    Caller guarantees: :meth:`run` and :meth:`flush` are not called concurrently.
    """

    def __init__(
        self,
        sink: Sink,
        outbox: AsyncOutbox,
        *,
        batch_size: int,
        retry_max: float,
        linger: float = 0.0,
        report_drops: Callable[[], Awaitable[object]] | None = None,
        route: Route | None = None,
    ) -> None:
        self.sink = sink
        self._outbox = outbox
        self.route = route or Route(sink.id)
        self._seen: set[str] | None = None  # read from the outbox on the first batch
        cap = getattr(sink, "max_batch", None)  # a sink that sends one request per event keeps batches small
        batch_size = min(batch_size, cap) if isinstance(cap, int) and cap > 0 else batch_size
        self.max_batch_size = batch_size
        self.batch_size = batch_size
        self.linger = linger
        self.report_drops = report_drops
        self._wait = RetryAfterWait(retry_max)
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._trouble = Trouble(log, f"sink {sink.id}")  # once at ERROR, then quietly, and the recovery
        self._kind: str | None = None  # the kind of the failure going on (logged anew when it changes)
        self._attempt = 0  # failed attempts in a row of the batch at the head of the queue
        self._last_send = -float("inf")  # monotonic start of the last request
        self._good_streak = 0
        self._last_notice = -float("inf")  # monotonic
        self.delivered = 0
        self.rejected = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.refused: int | None = None  # the status while the endpoint refuses every request
        self.held = False  # the queue waits because dead letters are at their limit
        self.send_seconds_sum = 0.0  # time spent in requests, and their number (for metrics)
        self.send_count = 0

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight (if any) is settled."""
        self._stopping.set()
        self._wakeup.set()

    @property
    def failing(self) -> bool:
        return self._trouble.failing_since is not None

    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            sink=self.sink.id,
            delivered=self.delivered,
            rejected=self.rejected,
            failures=self.failures,
            batch_size=self.batch_size,
            max_batch_size=self.max_batch_size,
            failing=self.failing,
            last_error=self.last_error,
            last_success=self.last_success,
            refused=self.refused,
            held=self.held,
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until :meth:`stop`; a batch in flight is finished first, so a clean stop sends nothing twice.

        Never raises (but ``CancelledError``): whatever goes wrong is logged, counted and tried again.
        """
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                if not await self._step():
                    await self._wakeup.wait()
            except (_Stopping, RetryError):
                return  # stopping while the upstream or the outbox fails: the events wait in the outbox
            except Exception as exc:  # a bug or a library's surprise must not stop the agent
                if self._kind != _kind_of(exc):  # its traceback once, then like any failure
                    log.error(
                        "sink %s: unexpected error while delivering (%s: %s); events wait in the outbox, "
                        "retrying with backoff",
                        self.sink.id,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )
                await self._back_off(exc)

    async def _step(self) -> bool:
        """Deliver the batch at the head of the queue. False when there is nothing to send."""
        batch = await self._pending()
        if not batch:
            return False
        if len(batch) < self.batch_size and self.linger > 0:
            remaining = self._last_send + self.linger - time.monotonic()
            if remaining > 0:  # in a burst: let more events join this batch
                await self._sleep(remaining)
                return True
        try:
            await self._round(batch, retry=True)
        except RetryLater as exc:  # the head batch did not go: wait, then read it again (new events may join)
            await self._back_off(exc)
            return True
        await self._report_drops()
        return True

    async def _round(self, batch: Sequence[StoredEvent], *, retry: bool) -> None:
        """Route, send and settle one batch from the outbox; RetryLater: the rest of it waits."""
        if self._seen is None:
            seen: set[str] = set()

            async def read() -> None:
                seen.update(await self._outbox.call(self._outbox.sync.seen, self.sink.id))

            await self._retrying(read, OutboxError)
            self._seen = seen
        planned = plan(self.route, [described(e) for e in batch], self._seen)
        r = _Round(batch[-1].seq)
        if planned.sends:
            await self._deliver(r, list(planned.sends), retry=retry)
        if r.held_at is None:
            await self._retrying(functools.partial(self._settle, r, r.last_seq), OutboxError)
            return
        if r.accepted:  # everything before the held event is done
            await self._retrying(functools.partial(self._settle, r, r.held_at.seq - 1, recovered=False), OutboxError)
        raise self._held(r.held_at)

    async def _pending(self) -> list[StoredEvent]:
        """The next batch; a read the outbox refuses (e.g. a damaged file being replaced) is retried."""
        batch: list[StoredEvent] = []

        async def read() -> None:
            nonlocal batch
            batch = await self._outbox.call(self._outbox.sync.pending, self.sink.id, self.batch_size)

        await self._retrying(read, OutboxError)
        return batch

    async def flush(self) -> None:
        """One last try to deliver what is pending, without retries (at shutdown)."""
        while batch := await self._outbox.call(self._outbox.sync.pending, self.sink.id, self.batch_size):
            try:
                await self._round(batch, retry=False)
            except (RetryLater, RetryError) as exc:
                depth = await self._outbox.call(self._outbox.sync.depth, self.sink.id)
                log.warning("sink %s: %d events stay in the outbox for next time (%s)", self.sink.id, depth, exc)
                return
            except (OutboxError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a sink's surprise must not stop the stop: the rest waits in the outbox
                log.error(
                    "sink %s: unexpected error in the last delivery attempt (%s: %s); the rest waits in the outbox",
                    self.sink.id,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                return

    async def _retrying(self, work: Callable[[], Awaitable[None]], retry_on: type[Exception]) -> None:
        """Run ``work`` until it succeeds, with backoff; raises RetryError only when stopping."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(retry_on),
            wait=self._wait,
            stop=lambda _: self._stopping.is_set(),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
        ):
            with attempt:
                await work()

    # -- sending and splitting -------------------------------------------------------------------

    async def _send(self, r: _Round, part: list[Send], *, whole: bool) -> None:
        """Send ``part`` once. Events the sink accepted before a failure are settled and leave ``part``."""
        self._last_send = started = time.monotonic()
        try:
            await self.sink.send([present(s.event, s.type) for s in part])
        except RetryLater as exc:
            if exc.accepted > 0:  # taken before the failure: never send those again
                await self._take(r, part, exc.accepted)
            elif isinstance(exc, SendTimeout) and whole and len(part) > 1:  # on its way, no answer: too large?
                self._shrink(len(part), str(exc))
            raise
        finally:
            self.send_seconds_sum += time.monotonic() - started
            self.send_count += 1
        r.take(part)
        self._good_streak += 1
        if self.batch_size < self.max_batch_size and self._good_streak >= RECOVER_AFTER:
            self.batch_size = min(self.max_batch_size, self.batch_size * 2)
            self._good_streak = 0
            log.info("sink %s: batch size back up to %d", self.sink.id, self.batch_size)

    async def _take(self, r: _Round, part: list[Send], accepted: int) -> None:
        """The first ``accepted`` events of ``part`` were accepted: settle them now, drop them from ``part``."""
        accepted = min(accepted, len(part))
        r.take(part[:accepted])
        up_to = part[accepted].event.seq - 1 if accepted < len(part) else r.last_seq
        del part[:accepted]
        await self._retrying(functools.partial(self._settle, r, up_to, recovered=False), OutboxError)

    def _shrink(self, size: int, why: str) -> None:
        self._good_streak = 0
        new = max(1, size // 2)
        if new < self.batch_size:
            self.batch_size = new
            log.warning("sink %s: %s; batch size halved to %d events", self.sink.id, why, new)

    async def _deliver(self, r: _Round, part: list[Send], *, retry: bool) -> None:
        """Send ``part`` whole, once; if the receiver refuses events, find them (oldest first).

        A RetryLater of the whole goes to the caller (what the sink took before failing is settled).
        After a split: everything accepted is in ``r.done``, the refused events are in ``r.rejected``
        (or ``r.held_at`` says where the dead letters ran out of room); nothing accepted at all raises
        :class:`EndpointRefused`, since the endpoint refuses everything, not these events.
        """
        try:
            await self._send(r, part, whole=True)
            return
        except Rejected as exc:
            room = await self._outbox.call(self._outbox.sync.dead_letter_room)
            split = _Split(room, split_budget(len(part)) - 1)
            with contextlib.suppress(_SplitEnds):
                await self._refused(r, split, part, exc, retry)
            refusal = exc
        if r.held_at is None and not r.accepted:
            raise EndpointRefused(
                f"HTTP {refusal.status} for every event tried (the endpoint refuses everything, not these events; "
                "check the sink's url)",
                refusal.status,
            )

    async def _refused(self, r: _Round, split: _Split, part: list[Send], exc: Rejected, retry: bool) -> None:
        """``part`` was refused with ``exc``: find the events refused on their own, oldest first."""
        while exc.accepted is not None or len(part) == 1:  # the sink named the refused event
            n = min(exc.accepted or 0, len(part) - 1)
            r.take(part[:n])
            self._refused_alone(r, split, part[n].event, exc)
            part = part[n + 1 :]
            if not part:
                return
            try:
                await self._try(r, split, part, retry)
                return
            except Rejected as again:
                exc = again
        if exc.status == PAYLOAD_TOO_LARGE:
            self._shrink(len(part), f"the upstream finds {len(part)} events too large (HTTP 413)")
        mid = len(part) // 2
        for half in (part[:mid], part[mid:]):
            try:
                await self._try(r, split, half, retry)
            except Rejected as again:
                await self._refused(r, split, half, again, retry)

    async def _try(self, r: _Round, split: _Split, part: list[Send], retry: bool) -> None:
        """Send one piece of a split (retried in place when ``retry``); it counts against the budget
        while nothing is accepted."""
        if not r.accepted:
            if split.budget <= 0:
                raise _SplitEnds
            split.budget -= 1
        if retry:
            await self._retrying(functools.partial(self._send, r, part, whole=False), RetryLater)
        else:
            await self._send(r, part, whole=False)

    def _refused_alone(self, r: _Round, split: _Split, event: StoredEvent, exc: Rejected) -> None:
        if split.refused >= split.room:  # no room for another dead letter: the queue waits here
            r.held_at = event
            raise _SplitEnds
        split.refused += 1
        (r.rejected if r.accepted else r.doubtful).append((event, str(exc)))

    async def _settle(self, r: _Round, up_to: int, *, recovered: bool = True) -> None:
        """Move the cursor to ``up_to``, with the dead letters and seen alerts of what was done so far.

        ``recovered`` False: a part of a batch was accepted but the sink is still failing (its error
        and the once-at-ERROR logging stay as they are)."""
        changes = seen_changes(r.done)
        await self._outbox.call(self._outbox.sync.settle, self.sink.id, up_to, r.rejected, changes)
        self._seen = apply_changes(self._seen or set(), changes)
        for event, reason in r.rejected:
            log.error(
                "sink %s refused event seq=%d id=%s (%s): set aside as a dead letter",
                self.sink.id,
                event.seq,
                event.id,
                reason,
            )
        answered = bool(r.done or r.rejected)
        self.delivered += len(r.done)
        self.rejected += len(r.rejected)
        r.done, r.rejected = [], []
        if answered:
            self.last_success = time.time()
        if answered and recovered:
            self._recovered()

    def _recovered(self) -> None:
        self._attempt = 0
        self._kind = None
        self.last_error = None  # the uplink is up again
        self.refused = None
        self.held = False
        self._trouble.ok("delivering again")

    # -- failures --------------------------------------------------------------------------------

    def _held(self, event: StoredEvent) -> _Held:
        limit = getattr(self._outbox.sync, "max_dead_letters", 0)
        return _Held(
            f"the queue is held at seq={event.seq}: the upstream refuses it and the dead letters are at "
            f"max_dead_letters = {limit}; retry or purge them with `andon-agent outbox`"
        )

    def _failed(self, exc: BaseException | None) -> None:
        """Count and show one failed attempt (logged once per kind of failure, then quietly)."""
        self.failures += 1
        self.last_error = str(exc) if isinstance(exc, AndonError) else f"{type(exc).__name__}: {exc}"
        self.refused = exc.status if isinstance(exc, EndpointRefused) else None
        self.held = isinstance(exc, _Held)
        kind = _kind_of(exc)
        if kind != self._kind and self.failing:
            self._trouble = Trouble(log, f"sink {self.sink.id}")  # another kind of failure: said at ERROR again
        self._kind = kind
        hint = {
            "refused": "nothing is set aside; events wait in the outbox, retrying with backoff",
            "held": "new events wait behind it",
        }.get(kind, "events wait in the outbox, retrying with backoff")
        self._trouble.fail(f"cannot deliver ({self.last_error})", hint)

    async def _back_off(self, exc: BaseException) -> None:
        """A failed attempt of the head batch: count it, then wait (capped backoff, Retry-After)."""
        self._failed(exc)
        self._attempt += 1
        await self._sleep(self._wait.delay(self._attempt, exc))
        if self._stopping.is_set():
            raise _Stopping

    def _before_sleep(self, state: RetryCallState) -> None:
        self._failed(state.outcome.exception() if state.outcome else None)

    async def _report_drops(self) -> None:
        if self.report_drops is None or not self._outbox.sync.unreported_drops:
            return
        if time.monotonic() - self._last_notice < NOTICE_INTERVAL:
            return
        self._last_notice = time.monotonic()
        try:
            await self.report_drops()
        except AndonError as exc:  # the disk refused: the next good delivery tries again
            log.warning("sink %s: cannot commit the dropped-events notice yet (%s)", self.sink.id, exc)
