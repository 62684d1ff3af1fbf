"""The status endpoints: ``GET /healthz``, ``GET /metrics`` (Prometheus text) and ``GET /status`` (JSON).

Every answer is built from one :class:`Snapshot` of the running agent, taken when the request
arrives, so the three never disagree. The Prometheus registry belongs to this server (no global
registry) and is fed by a collector that reads the snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from agent.model import Severity
from agent.ops.httpserver import HttpServer, Request, Response
from agent.pipeline.alertlog import rfc3339

if TYPE_CHECKING:
    from agent.pipeline.supervisor import Agent


@dataclass
class MachineView:
    id: str
    protocol: str
    connected: bool
    offline: bool
    healthy: bool
    last_good_read: str | None
    reads: int
    errors: int
    last_error: str | None
    bad_signals: dict[str, str]
    poll_seconds_sum: float
    poll_count: int


@dataclass
class SinkView:
    id: str
    url: str
    up: bool
    pending: int
    delivered: int
    rejected: int
    failures: int
    last_success: str | None
    last_error: str | None
    send_seconds_sum: float
    send_count: int


@dataclass
class Snapshot:
    gateway: str
    site: str | None
    uptime_seconds: float
    healthy: bool
    problems: list[str]
    machines: list[MachineView]
    alerts: list[dict[str, Any]]
    outbox: dict[str, Any]
    sinks: list[SinkView] = field(default_factory=list)


async def take_snapshot(agent: Agent) -> Snapshot:
    """What the agent is doing now. Reads the outbox on its worker thread."""
    now_mono, now = agent.clock.monotonic(), agent.clock.wall()
    problems: list[str] = []
    machines: list[MachineView] = []
    for runner in agent.machines:
        st, m = runner.status, runner.machine
        fresh = now_mono - runner.last_good_monotonic <= m.offline_after + m.poll_interval + m.timeout
        healthy = fresh or st.offline
        if not healthy:
            problems.append(f"machine {m.id}: no good read for {now_mono - runner.last_good_monotonic:.0f}s")
        if runner.outbox_error:
            problems.append(f"machine {m.id}: events cannot be committed: {runner.outbox_error}")
        machines.append(
            MachineView(
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
        )
    outbox: dict[str, Any] = {
        "events": 0,
        "bytes": 0,
        "dropped": 0,
        "dead_letters": 0,
        "disk_full": False,
        "write_errors": 0,
        "oldest_event_age_seconds": None,
    }
    sinks: list[SinkView] = []
    if agent.outbox is not None:
        ob = agent.outbox
        stats = await ob.call(ob.sync.stats)
        outbox.update(
            events=stats.events,
            bytes=stats.bytes,
            dropped=stats.dropped,
            dead_letters=stats.dead_letters,
            disk_full=stats.disk_full,
            write_errors=stats.write_errors,
        )
        if stats.disk_full:
            problems.append("outbox: the disk is full, new events cannot be stored")
        oldest: float | None = None
        for d in agent.deliveries:
            pending = await ob.call(ob.sync.depth, d.sink.id)
            head = await ob.call(ob.sync.pending, d.sink.id, 1)
            if head:
                born = _event_time(head[0].body)
                oldest = born if oldest is None or (born is not None and born < oldest) else oldest
            sinks.append(
                SinkView(
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
                )
            )
        outbox["oldest_event_age_seconds"] = None if oldest is None else max(0.0, now - oldest)
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


def _event_time(body: bytes) -> float | None:
    try:
        return datetime.fromisoformat(json.loads(body)["time"]).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


class SnapshotCollector(Collector):
    """Prometheus metrics from the latest snapshot (set just before each scrape)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        m = "machine"
        connected = GaugeMetricFamily("andon_machine_connected", "1 while the machine's connection is up", labels=[m])
        offline = GaugeMetricFamily(
            "andon_machine_offline", "1 while the machine's offline alert is active", labels=[m]
        )
        bad = GaugeMetricFamily("andon_machine_bad_signals", "signals whose last reading was bad", labels=[m])
        reads = CounterMetricFamily("andon_machine_polls", "polls of the machine", labels=[m])
        errors = CounterMetricFamily("andon_machine_read_errors", "failed connections and reads", labels=[m])
        poll = SummaryMetricFamily("andon_poll_duration_seconds", "time one poll of a machine took", labels=[m])
        for v in s.machines:
            connected.add_metric([v.id], int(v.connected))
            offline.add_metric([v.id], int(v.offline))
            bad.add_metric([v.id], len(v.bad_signals))
            reads.add_metric([v.id], v.reads)
            errors.add_metric([v.id], v.errors)
            poll.add_metric([v.id], v.poll_count, v.poll_seconds_sum)
        yield from (connected, offline, bad, reads, errors, poll)

        ob = s.outbox
        yield GaugeMetricFamily("andon_outbox_events", "events in the outbox", value=ob["events"])
        yield GaugeMetricFamily(
            "andon_outbox_oldest_event_age_seconds",
            "age of the oldest undelivered event",
            value=ob["oldest_event_age_seconds"] or 0.0,
        )
        yield CounterMetricFamily(
            "andon_outbox_dropped_events", "events dropped because the outbox was full", value=ob["dropped"]
        )
        yield GaugeMetricFamily(
            "andon_outbox_dead_letters", "events the upstream refused, set aside", value=ob["dead_letters"]
        )

        k = "sink"
        up = GaugeMetricFamily("andon_sink_up", "1 while deliveries to the sink succeed", labels=[k])
        pending = GaugeMetricFamily("andon_sink_pending_events", "events waiting for the sink", labels=[k])
        delivered = CounterMetricFamily("andon_sink_delivered_events", "events the sink accepted", labels=[k])
        rejected = CounterMetricFamily("andon_sink_rejected_events", "events the sink refused", labels=[k])
        failures = CounterMetricFamily("andon_sink_failures", "failed delivery attempts", labels=[k])
        latency = SummaryMetricFamily(
            "andon_sink_request_duration_seconds", "time one delivery request took", labels=[k]
        )
        for d in s.sinks:
            up.add_metric([d.id], int(d.up))
            pending.add_metric([d.id], d.pending)
            delivered.add_metric([d.id], d.delivered)
            rejected.add_metric([d.id], d.rejected)
            failures.add_metric([d.id], d.failures)
            latency.add_metric([d.id], d.send_count, d.send_seconds_sum)
        yield from (up, pending, delivered, rejected, failures, latency)

        active = GaugeMetricFamily("andon_alerts_active", "active alerts", labels=["severity"])
        for sev in Severity:
            active.add_metric([sev.label], sum(a["severity"] == sev.label for a in s.alerts))
        yield active
        yield GaugeMetricFamily("andon_healthy", "1 while /healthz answers 200", value=int(s.healthy))


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class StatusServer:
    """Serves the agent's status on ``listen`` ("host:port"; 127.0.0.1 unless configured otherwise)."""

    def __init__(self, agent: Agent, listen: str) -> None:
        self._agent = agent
        host, port = parse_listen(listen)
        self._http = HttpServer(self._handle, host, port)
        self._collector = SnapshotCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)

    @property
    def port(self) -> int:
        return self._http.port

    async def __aenter__(self) -> StatusServer:
        await self._http.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.stop()

    async def _handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers={"allow": "GET"})
        path = request.path.split("?", 1)[0]
        if path not in ("/healthz", "/metrics", "/status"):
            return Response(404, b"not found: try /healthz, /metrics or /status\n")
        snap = await take_snapshot(self._agent)
        if path == "/healthz":
            text = "ok\n" if snap.healthy else "".join(f"{p}\n" for p in snap.problems)
            return Response(200 if snap.healthy else 503, text.encode())
        if path == "/metrics":
            self._collector.snapshot = snap
            return Response(200, generate_latest(self._registry), "text/plain; version=0.0.4; charset=utf-8")
        return Response(200, json.dumps(asdict(snap), indent=2).encode() + b"\n", "application/json")
