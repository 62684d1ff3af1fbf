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
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_exponential_jitter

from agent.errors import AndonError, OutboxError, Rejected, RetryLater
from agent.model import StoredEvent
from agent.pipeline.outbox import AsyncOutbox
from agent.sinks.base import SendTimeout, Sink

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
    ) -> None:
        self.sink = sink
        self._outbox = outbox
        self.max_batch_size = batch_size
        self.batch_size = batch_size
        self.linger = linger
        self.report_drops = report_drops
        self._wait = RetryAfterWait(retry_max)
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._failing = False
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
            failing=self._failing,
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
                rejected = await self._deliver(batch, retry=True, whole=True)
                await self._retrying(functools.partial(self._settle, batch, rejected), OutboxError)
            except _Shrunk:
                continue
            except RetryError:
                return  # stopping while the upstream fails: the events wait in the outbox
            await self._report_drops()

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
                rejected = await self._deliver(batch, retry=False)
            except RetryLater as exc:
                depth = await self._outbox.call(self._outbox.sync.depth, self.sink.id)
                log.warning("sink %s: %d events stay in the outbox for next time (%s)", self.sink.id, depth, exc)
                return
            await self._settle(batch, rejected)

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

    async def _send(self, batch: Sequence[StoredEvent], *, whole: bool) -> None:
        self._last_send = started = time.monotonic()
        try:
            await self.sink.send(batch)
        except SendTimeout as exc:
            if whole and len(batch) > 1:  # maybe too large for a slow link: fewer events next time
                self.failures += 1
                self.last_error = str(exc)
                self._shrink(len(batch), str(exc))
                raise _Shrunk from exc
            raise
        finally:
            self.send_seconds_sum += time.monotonic() - started
            self.send_count += 1
        self._good_streak += 1
        if self.batch_size < self.max_batch_size and self._good_streak >= RECOVER_AFTER:
            self.batch_size = min(self.max_batch_size, self.batch_size * 2)
            self._good_streak = 0
            log.info("sink %s: batch size back up to %d", self.sink.id, self.batch_size)

    def _shrink(self, size: int, why: str) -> None:
        self._good_streak = 0
        new = max(1, size // 2)
        if new < self.batch_size:
            self.batch_size = new
            log.warning("sink %s: %s; batch size halved to %d events", self.sink.id, why, new)

    async def _deliver(
        self, batch: Sequence[StoredEvent], *, retry: bool, whole: bool = False
    ) -> list[tuple[StoredEvent, str]]:
        """Send the batch (each part retried on its own); on rejection bisect it.

        Returns the refused events with the reason. A part once accepted is never sent again,
        even if a later part has to wait for the upstream.
        """
        try:
            if retry:
                await self._retrying(functools.partial(self._send, batch, whole=whole), RetryLater)
            else:
                await self._send(batch, whole=False)
        except Rejected as exc:
            if len(batch) == 1:
                log.error(
                    "sink %s refused event seq=%d id=%s (%s): set aside as a dead letter",
                    self.sink.id,
                    batch[0].seq,
                    batch[0].id,
                    exc,
                )
                return [(batch[0], str(exc))]
            if exc.status == PAYLOAD_TOO_LARGE:
                self._shrink(len(batch), f"the upstream finds {len(batch)} events too large (HTTP 413)")
            mid = len(batch) // 2
            return await self._deliver(batch[:mid], retry=retry) + await self._deliver(batch[mid:], retry=retry)
        return []

    async def _settle(self, batch: Sequence[StoredEvent], rejected: list[tuple[StoredEvent, str]]) -> None:
        await self._outbox.call(self._outbox.sync.settle, self.sink.id, batch[-1].seq, rejected)
        self.delivered += len(batch) - len(rejected)
        self.rejected += len(rejected)
        self.last_success = time.time()
        self.last_error = None  # the uplink is up again
        if self._failing:
            self._failing = False
            log.info("sink %s: delivering again", self.sink.id)

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
        if not self._failing:  # once at ERROR, then quietly until it recovers
            self._failing = True
            log.error(
                "sink %s: cannot deliver (%s); events wait in the outbox, retrying with backoff", self.sink.id, exc
            )
        else:
            log.debug(
                "sink %s: retry %d in %.1fs (%s)",
                self.sink.id,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
                exc,
            )
