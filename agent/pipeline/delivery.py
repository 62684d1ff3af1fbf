"""Delivery: moves events from the outbox to one sink, oldest first, with retry and set-aside.

Transient failures (:class:`RetryLater`) are retried with tenacity: capped exponential backoff with
jitter, never shorter than the receiver's ``Retry-After``. A refused batch (:class:`Rejected`) is
split in halves until the refused events are found; those go to the dead-letter table and the rest
are delivered, so one bad event never blocks the queue.

Batch size. Up to ``batch_size`` events go in one request. A 413 (payload too large) halves the
batch size (and splits the refused batch); so does a timeout of a whole batch, since a slow link may
never carry a large one within the timeout. After :data:`RECOVER_AFTER` good requests in a row the
size doubles again, up to ``batch_size``. One event that alone is too large becomes a dead letter.

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
is sent again. ``Rejected.accepted`` = n names the one refused event (``batch[n]``): it is set aside
and the rest go on, without a split. A sink may cap its batches (``max_batch``).

Drops. After a request succeeds (the link is up), if the outbox dropped events that were not yet
reported, ``report_drops`` is awaited (the runtime wires it to :meth:`AlertLog.report_drops`), which
commits one ``andon.outbox.dropped`` event saying how many (at most one a minute, should drops go on
while the link is up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_exponential_jitter

from agent.errors import AndonError, OutboxError, Rejected, RetryLater
from agent.model import StoredEvent
from agent.ops.logs import Trouble
from agent.pipeline.outbox import AsyncOutbox
from agent.sinks.base import SendTimeout, Sink
from agent.sinks.routing import Route, Send, apply_changes, described, plan, present, seen_changes

log = logging.getLogger("andon.delivery")

PAYLOAD_TOO_LARGE = 413
RECOVER_AFTER = 20  # good requests in a row at a reduced batch size before it doubles again
NOTICE_INTERVAL = 60.0  # at most one dropped-events notice a minute, should drops go on with the link up


class RetryAfterWait:
    """tenacity wait: capped exponential backoff with jitter, but at least the ``Retry-After``."""

    def __init__(self, cap: float) -> None:
        self._backoff = wait_exponential_jitter(multiplier=0.5, max=cap, jitter=0.5 if cap > 1 else cap / 2)

    def __call__(self, state: RetryCallState) -> float:
        delay = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryLater) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay


class _Shrunk(Exception):
    """A whole batch timed out and the batch size was halved: read a smaller batch and try again."""


Rejects = list[tuple[StoredEvent, str]]


@dataclass
class _Round:
    """One batch from the outbox on its way to the sink: what is accepted or set aside and not yet
    settled, and the highest seq the sink is done with so far (skipped events included)."""

    last_seq: int  # the batch's last seq: the cursor once the round is over
    done: list[Send] = field(default_factory=list)  # accepted, not yet settled
    rejected: Rejects = field(default_factory=list)  # set aside, not yet settled


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


class Delivery:
    """One sink's delivery loop. Call :meth:`wake` after new events were committed."""

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
        self._trouble = Trouble(log, f"sink {sink.id}")  # once at ERROR, a reminder now and then, the recovery
        self._last_send = -float("inf")  # monotonic start of the last request
        self._good_streak = 0
        self._last_notice = -float("inf")  # monotonic
        self.delivered = 0
        self.rejected = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.send_seconds_sum = 0.0  # time spent in requests, and their number (for metrics)
        self.send_count = 0

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight (if any) is settled."""
        self._stopping.set()
        self._wakeup.set()

    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            sink=self.sink.id,
            delivered=self.delivered,
            rejected=self.rejected,
            failures=self.failures,
            batch_size=self.batch_size,
            max_batch_size=self.max_batch_size,
            failing=self._trouble.failing,
            last_error=self.last_error,
            last_success=self.last_success,
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> None:
        """Deliver until :meth:`stop`; a batch in flight is finished first, so a clean stop sends nothing twice."""
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                batch = await self._pending()
            except RetryError:
                return
            if not batch:
                await self._wakeup.wait()
                continue
            if len(batch) < self.batch_size and self.linger > 0:
                remaining = self._last_send + self.linger - time.monotonic()
                if remaining > 0:  # in a burst: let more events join this batch
                    await self._sleep(remaining)
                    continue
            try:
                await self._round(batch, retry=True)
            except _Shrunk:
                continue
            except RetryError:
                return  # stopping while the upstream fails: the events wait in the outbox
            await self._report_drops()

    async def _round(self, batch: Sequence[StoredEvent], *, retry: bool) -> None:
        """Route, send and settle one batch from the outbox."""
        if self._seen is None:
            seen: set[str] = set()

            async def read() -> None:
                seen.update(await self._outbox.call(self._outbox.sync.seen, self.sink.id))

            await self._retrying(read, OutboxError)
            self._seen = seen
        planned = plan(self.route, [described(e) for e in batch], self._seen)
        r = _Round(batch[-1].seq)
        if planned.sends:
            await self._deliver(r, list(planned.sends), retry=retry, whole=retry)
        await self._retrying(functools.partial(self._settle, r, r.last_seq), OutboxError)

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

    async def _send(self, r: _Round, part: list[Send], *, whole: bool) -> None:
        """Send ``part`` once. Events the sink accepted before a failure are settled and leave ``part``."""
        self._last_send = started = time.monotonic()
        try:
            await self.sink.send([present(s.event, s.type) for s in part])
        except RetryLater as exc:
            if exc.accepted > 0:  # taken before the failure: never send those again
                await self._take(r, part, exc.accepted)
            if isinstance(exc, SendTimeout) and whole and len(part) > 1:  # maybe too large for a slow link
                self.failures += 1
                self.last_error = str(exc)
                self._shrink(len(part), str(exc))
                raise _Shrunk from exc
            raise
        finally:
            self.send_seconds_sum += time.monotonic() - started
            self.send_count += 1
        r.done += part
        self._good_streak += 1
        if self.batch_size < self.max_batch_size and self._good_streak >= RECOVER_AFTER:
            self.batch_size = min(self.max_batch_size, self.batch_size * 2)
            self._good_streak = 0
            log.info("sink %s: batch size back up to %d", self.sink.id, self.batch_size)

    async def _take(self, r: _Round, part: list[Send], accepted: int) -> None:
        """The first ``accepted`` events of ``part`` were accepted: settle them now, drop them from ``part``."""
        accepted = min(accepted, len(part))
        r.done += part[:accepted]
        up_to = part[accepted].event.seq - 1 if accepted < len(part) else r.last_seq
        del part[:accepted]
        await self._retrying(functools.partial(self._settle, r, up_to, recovered=False), OutboxError)

    def _shrink(self, size: int, why: str) -> None:
        self._good_streak = 0
        new = max(1, size // 2)
        if new < self.batch_size:
            self.batch_size = new
            log.warning("sink %s: %s; batch size halved to %d events", self.sink.id, why, new)

    async def _deliver(self, r: _Round, part: list[Send], *, retry: bool, whole: bool = False) -> None:
        """Send ``part`` (each piece retried on its own); a refused event is set aside, a refused batch
        split to find them. Accepted events go to ``r.done``, refused ones to ``r.rejected``. A piece
        once accepted is never sent again, even if a later piece has to wait for the upstream."""
        while part:
            try:
                if retry:
                    await self._retrying(functools.partial(self._send, r, part, whole=whole), RetryLater)
                else:
                    await self._send(r, part, whole=False)
                return
            except Rejected as exc:
                if exc.accepted is not None or len(part) == 1:  # the sink named the refused event
                    n = min(exc.accepted or 0, len(part) - 1)
                    r.done += part[:n]
                    self._set_aside(r, part[n].event, exc)
                    del part[: n + 1]
                    whole = False
                    continue
                if exc.status == PAYLOAD_TOO_LARGE:
                    self._shrink(len(part), f"the upstream finds {len(part)} events too large (HTTP 413)")
                mid = len(part) // 2
                await self._deliver(r, part[:mid], retry=retry)
                await self._deliver(r, part[mid:], retry=retry)
                return

    def _set_aside(self, r: _Round, event: StoredEvent, exc: Rejected) -> None:
        log.error(
            "sink %s refused event seq=%d id=%s (%s): set aside as a dead letter",
            self.sink.id,
            event.seq,
            event.id,
            exc,
        )
        r.rejected.append((event, str(exc)))

    async def _settle(self, r: _Round, up_to: int, *, recovered: bool = True) -> None:
        """Move the cursor to ``up_to``, with the dead letters and seen alerts of what was done so far.

        ``recovered`` False: a part of a batch was accepted but the sink is still failing (its error
        and the once-at-ERROR logging stay as they are)."""
        changes = seen_changes(r.done)
        await self._outbox.call(self._outbox.sync.settle, self.sink.id, up_to, r.rejected, changes)
        self._seen = apply_changes(self._seen or set(), changes)
        answered = bool(r.done or r.rejected)
        self.delivered += len(r.done)
        self.rejected += len(r.rejected)
        r.done, r.rejected = [], []
        if answered:
            self.last_success = time.time()
        if not answered or not recovered:
            return
        self.last_error = None  # the uplink is up again
        self._trouble.ok("delivering again")

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

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.failures += 1
        self.last_error = str(exc)
        delay = state.next_action.sleep if state.next_action else 0.0
        self._trouble.fail(
            f"cannot deliver ({exc})", f"events wait in the outbox, retrying with backoff (next in {delay:.1f}s)"
        )
