"""``send-test``: one ``andon.test`` event through the outbox, and each sink's verdict on it.

:func:`send_test` commits the event (subject ``_gateway/test``, a real CloudEvent with the next
``seq``, ``data.sinks`` naming the sinks it is for, so routing sends it to those only) and waits
until each of those sinks has settled it: its cursor in the outbox passed the event's ``seq``. A sink
that settled it by setting it aside refused it (the dead letter's reason says why); a sink that has
not settled it when its time is up gives the delivery's last error (TLS, token, HTTP status,
timeout) or says that it is still busy with the events ahead. The running agent calls it for the
``send-test`` command (through :mod:`agent.ops.control`); with no agent running the command calls it
on a delivery of its own (:mod:`agent.cli.send_test`). Either way the event is an ordinary event:
one not accepted in time stays in the outbox and goes out when the upstream takes it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.model import Severity
from agent.pipeline.alertlog import AlertLog
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox

TEST_TYPE = "andon.test"
TEST_SUBJECT = "_gateway/test"
WATCH_INTERVAL = 0.1  # how often a waiting sink's cursor is looked at (a memory read on the outbox thread)


@dataclass(frozen=True)
class SinkVerdict:
    """One sink's answer to the test event: ``accepted``, or why not."""

    sink: str
    accepted: bool
    detail: str  # "accepted", or why not in one line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SinkVerdict:
        return cls(str(doc["sink"]), bool(doc["accepted"]), str(doc["detail"]))


def timeout_for(sink_timeout: float) -> float:
    """How long ``send-test`` waits for a sink by default: two requests and a retry's backoff."""
    return 2 * sink_timeout + 5.0


async def send_test(
    alerts: AlertLog,
    outbox: AsyncOutbox,
    deliveries: Mapping[str, Delivery],
    timeouts: Mapping[str, float],
    *,
    by: str = "",
) -> tuple[int, list[SinkVerdict]]:
    """Commit the test event for the sinks in ``timeouts`` and wait for each (at most its timeout).

    ``deliveries`` are the running deliveries by sink id (a sink without one cannot be waited for).
    Returns the event's ``seq`` and the verdicts, in the order of ``timeouts``.
    """
    data = {
        "sinks": list(timeouts),
        "severity": Severity.INFO.label,
        "message": f"test event (andon-agent send-test{by}): the uplink from this gateway works",
        "host": socket.gethostname(),
    }
    event = await alerts.record(TEST_TYPE, TEST_SUBJECT, data, Severity.INFO)
    verdicts = await asyncio.gather(
        *(_wait(outbox, deliveries.get(sink), sink, event.seq, seconds) for sink, seconds in timeouts.items())
    )
    return event.seq, list(verdicts)


async def _wait(outbox: AsyncOutbox, delivery: Delivery | None, sink: str, seq: int, seconds: float) -> SinkVerdict:
    if delivery is None:
        return SinkVerdict(sink, False, "the sink is not running (it failed to start; see the agent's log)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (cursor := await outbox.call(outbox.sync.cursor, sink)) < seq:
        if loop.time() >= deadline:
            return SinkVerdict(sink, False, await _why_not(outbox, delivery, sink, seq, seconds))
        await asyncio.sleep(WATCH_INTERVAL)
    del cursor
    reason = await outbox.call(outbox.sync.dead_letter_reason, sink, seq)
    if reason is not None:
        return SinkVerdict(sink, False, f"refused: {reason} (set aside as a dead letter)")
    return SinkVerdict(sink, True, "accepted")


async def _why_not(outbox: AsyncOutbox, delivery: Delivery, sink: str, seq: int, seconds: float) -> str:
    if delivery.last_error:
        return f"not accepted within {seconds:g}s: {delivery.last_error}"
    ahead = await outbox.call(outbox.sync.depth_before, sink, seq)
    if ahead:
        return f"not accepted within {seconds:g}s: {ahead} event(s) ahead of it are still being delivered"
    return f"not accepted within {seconds:g}s: no answer from the upstream yet"


def targets(sinks: Sequence[str], named: str | None) -> list[str]:
    """The sinks a test goes to: the one ``--sink`` names, or all. Raises KeyError for an unknown one."""
    if named is None:
        return list(sinks)
    if named not in sinks:
        raise KeyError(named)
    return [named]
