"""Taking a :class:`~agent.ops.snapshot.Snapshot` of the running agent: machines, alerts, outbox, sinks.

Read-only: it looks at the runners' and deliveries' counters and reads the outbox on its worker
thread. :meth:`agent.pipeline.supervisor.Agent.snapshot` calls it for the status endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from agent.config.schema import Config
from agent.ops.snapshot import MachineView, SinkView, Snapshot
from agent.pipeline.alertlog import AlertLog, rfc3339
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox
from agent.pipeline.runner import Clock, MachineRunner


class Running(Protocol):
    """What a snapshot looks at (the :class:`~agent.pipeline.supervisor.Agent` is one)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def started_at(self) -> float: ...
    @property
    def machines(self) -> Sequence[MachineRunner]: ...
    @property
    def deliveries(self) -> Sequence[Delivery]: ...
    @property
    def outbox(self) -> AsyncOutbox | None: ...
    @property
    def alerts(self) -> AlertLog | None: ...


def _machine(runner: MachineRunner, now_mono: float, problems: list[str]) -> MachineView:
    """One machine's view; a machine that stopped reading (and is not known offline) is a problem."""
    st, m = runner.status, runner.machine
    fresh = now_mono - runner.last_good_monotonic <= m.offline_after + m.poll_interval + m.timeout
    healthy = fresh or st.offline
    if not healthy:
        problems.append(f"machine {m.id}: no good read for {now_mono - runner.last_good_monotonic:.0f}s")
    if runner.outbox_error:
        problems.append(f"machine {m.id}: events cannot be committed: {runner.outbox_error}")
    return MachineView(
        id=m.id,
        protocol=m.protocol,
        connected=st.connected,
        offline=st.offline,
        healthy=healthy,
        last_good_read=rfc3339(st.last_good) if st.last_good else None,
        reads=st.reads,
        errors=st.errors,
        last_error=st.last_error,
        bad_signals=dict(st.bad_signals),
        poll_seconds_sum=st.poll_seconds_sum,
        poll_count=st.poll_count,
    )


def _sink(d: Delivery, pending: int, problems: list[str]) -> SinkView:
    """One sink's view; an endpoint that refuses everything, or a queue held at the dead-letter limit, is a problem."""
    if d.refused is not None:
        problems.append(f"sink {d.sink.id}: the endpoint refuses every request: {d.last_error}")
    if d.held:
        problems.append(f"sink {d.sink.id}: delivery is held: {d.last_error}")
    return SinkView(
        id=d.sink.id,
        url=getattr(d.sink, "url", ""),
        up=d.last_error is None,
        pending=pending,
        delivered=d.delivered,
        rejected=d.rejected,
        failures=d.failures,
        last_success=rfc3339(d.last_success) if d.last_success else None,
        last_error=d.last_error,
        send_seconds_sum=d.send_seconds_sum,
        send_count=d.send_count,
        refused=d.refused,
        held=d.held,
    )


def _outbox_and_sinks(
    ob: AsyncOutbox, deliveries: Sequence[Delivery], now: float, problems: list[str]
) -> tuple[dict[str, Any], list[SinkView]]:
    """The outbox's figures and each sink's view, from the counters the outbox keeps in memory: a
    health check or a scrape never queues work on the outbox's disk thread (nor waits behind a slow
    fsync there)."""
    stats = ob.sync.stats()
    outbox: dict[str, Any] = {
        "events": stats.events,
        "bytes": stats.bytes,
        "dropped": stats.dropped,
        "dead_letters": stats.dead_letters,
        "disk_full": stats.disk_full,
        "write_errors": stats.write_errors,
        "oldest_event_age_seconds": None if stats.oldest_time is None else max(0.0, now - stats.oldest_time),
    }
    if stats.disk_full:
        problems.append("outbox: the disk is full, new events cannot be stored")
    sinks = [_sink(d, stats.sink_depths.get(d.sink.id, 0), problems) for d in deliveries]
    return outbox, sinks


_NO_OUTBOX: dict[str, Any] = {
    "events": 0,
    "bytes": 0,
    "dropped": 0,
    "dead_letters": 0,
    "disk_full": False,
    "write_errors": 0,
    "oldest_event_age_seconds": None,
}


async def take_snapshot(agent: Running) -> Snapshot:
    """What the agent is doing now, from memory (no disk access)."""
    now_mono, now = agent.clock.monotonic(), agent.clock.wall()
    problems: list[str] = []
    machines = [_machine(runner, now_mono, problems) for runner in agent.machines]
    outbox, sinks = dict(_NO_OUTBOX), list[SinkView]()
    if agent.outbox is not None:
        outbox, sinks = _outbox_and_sinks(agent.outbox, agent.deliveries, now, problems)
    alerts = [
        {"alert": a.key, "severity": a.severity.label, "message": a.message, "since": rfc3339(a.since)}
        for a in (agent.alerts.active.values() if agent.alerts else ())
    ]
    return Snapshot(
        gateway=agent.cfg.agent.gateway_id,
        site=agent.cfg.agent.site,
        uptime_seconds=now_mono - agent.started_at,
        healthy=not problems,
        problems=problems,
        machines=machines,
        alerts=alerts,
        outbox=outbox,
        sinks=sinks,
    )
