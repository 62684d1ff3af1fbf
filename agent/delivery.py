"""Delivery: moves events from the outbox to one sink, oldest first, with retry and set-aside.

Transient failures (:class:`RetryLater`) are retried with tenacity: capped exponential backoff with
jitter, never shorter than the receiver's ``Retry-After``. A refused batch (:class:`Rejected`) is
split in halves until the refused events are found; those go to the dead-letter table and the rest
are delivered, so one bad event never blocks the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_exponential_jitter

from agent.errors import OutboxError, Rejected, RetryLater
from agent.model import StoredEvent
from agent.outbox import AsyncOutbox
from agent.sinks import Sink

log = logging.getLogger("andon.delivery")


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


class Delivery:
    """One sink's delivery loop. Call :meth:`wake` after new events were committed."""

    def __init__(self, sink: Sink, outbox: AsyncOutbox, *, batch_size: int, retry_max: float) -> None:
        self.sink = sink
        self._outbox = outbox
        self._batch_size = batch_size
        self._wait = RetryAfterWait(retry_max)
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._failing = False
        self.delivered = 0
        self.rejected = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in flight (if any) is settled."""
        self._stopping.set()
        self._wakeup.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> None:
        """Deliver until :meth:`stop`; a batch in flight is finished first, so a clean stop sends nothing twice."""
        while not self._stopping.is_set():
            self._wakeup.clear()
            batch = await self._outbox.call(self._outbox.sync.pending, self.sink.id, self._batch_size)
            if not batch:
                await self._wakeup.wait()
                continue
            try:
                rejected = await self._deliver(batch, retry=True)
                await self._retrying(functools.partial(self._settle, batch, rejected), OutboxError)
            except RetryError:
                return  # stopping while the upstream fails: the events wait in the outbox

    async def flush(self) -> None:
        """One last try to deliver what is pending, without retries (at shutdown)."""
        while batch := await self._outbox.call(self._outbox.sync.pending, self.sink.id, self._batch_size):
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

    async def _deliver(self, batch: Sequence[StoredEvent], *, retry: bool) -> list[tuple[StoredEvent, str]]:
        """Send the batch (each part retried on its own); on rejection bisect it.

        Returns the refused events with the reason. A part once accepted is never sent again,
        even if a later part has to wait for the upstream.
        """
        try:
            if retry:
                await self._retrying(functools.partial(self.sink.send, batch), RetryLater)
            else:
                await self.sink.send(batch)
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
