"""Sinks take batches of events from the outbox and deliver them upstream.

A sink never holds events of its own. :meth:`Sink.send` either returns (the whole batch is accepted)
or raises :class:`~agent.errors.RetryLater` (send the same events again later; :class:`SendTimeout`
when the upstream did not answer in time) or :class:`~agent.errors.Rejected` (the receiver refuses
them). Caller guarantees: no concurrent ``send`` calls on one sink; events are passed oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent.errors import RetryLater
from agent.model import StoredEvent


class SendTimeout(RetryLater):
    """The upstream did not answer within the sink's timeout (it may still have taken the batch)."""


class Sink(Protocol):
    id: str

    async def send(self, events: Sequence[StoredEvent]) -> None: ...
