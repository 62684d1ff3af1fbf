"""The status endpoints: ``GET /healthz``, ``GET /metrics`` (Prometheus text) and ``GET /status`` (JSON),
served on the board's listener (one port for the board and the status).

Every answer is built from one :class:`~agent.ops.snapshot.Snapshot` of the running agent, taken
when the request arrives by the callable the server was given (the supervisor's
``Agent.snapshot``), so the three never disagree. This module only renders snapshots. The
Prometheus registry belongs to this server (no global registry) and is fed by a collector that
reads the snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from agent.model import Severity
from agent.ops.httpserver import Response
from agent.ops.snapshot import Snapshot


class SnapshotCollector(Collector):
    """Prometheus metrics from the latest snapshot (set just before each scrape)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        yield from _machine_metrics(s)
        yield from _outbox_metrics(s)
        yield from _sink_metrics(s)
        active = GaugeMetricFamily("andon_alerts_active", "active alerts", labels=["severity"])
        for sev in Severity:
            active.add_metric([sev.label], sum(a["severity"] == sev.label for a in s.alerts))
        yield active
        yield GaugeMetricFamily("andon_healthy", "1 while /healthz answers 200", value=int(s.healthy))


def _machine_metrics(s: Snapshot) -> Iterator[Metric]:
    m = "machine"
    connected = GaugeMetricFamily("andon_machine_connected", "1 while the machine's connection is up", labels=[m])
    offline = GaugeMetricFamily("andon_machine_offline", "1 while the machine's offline alert is active", labels=[m])
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


def _outbox_metrics(s: Snapshot) -> Iterator[Metric]:
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
    yield GaugeMetricFamily("andon_outbox_bytes", "bytes of the queued events' bodies", value=ob["bytes"])
    yield GaugeMetricFamily(
        "andon_outbox_disk_full", "1 while the last write failed because the disk is full", value=int(ob["disk_full"])
    )
    yield CounterMetricFamily(
        "andon_outbox_write_errors", "writes the outbox refused since start", value=ob["write_errors"]
    )


def _sink_metrics(s: Snapshot) -> Iterator[Metric]:
    k = "sink"
    up = GaugeMetricFamily("andon_sink_up", "1 while deliveries to the sink succeed", labels=[k])
    pending = GaugeMetricFamily("andon_sink_pending_events", "events waiting for the sink", labels=[k])
    delivered = CounterMetricFamily("andon_sink_delivered_events", "events the sink accepted", labels=[k])
    rejected = CounterMetricFamily("andon_sink_rejected_events", "events the sink refused", labels=[k])
    failures = CounterMetricFamily("andon_sink_failures", "failed delivery attempts", labels=[k])
    latency = SummaryMetricFamily("andon_sink_request_duration_seconds", "time one delivery request took", labels=[k])
    refused = GaugeMetricFamily(
        "andon_sink_refused", "1 while the endpoint or the credentials refuse every request", labels=[k]
    )
    held = GaugeMetricFamily("andon_sink_held", "1 while the queue waits: dead letters at their limit", labels=[k])
    for d in s.sinks:
        up.add_metric([d.id], int(d.up))
        pending.add_metric([d.id], d.pending)
        delivered.add_metric([d.id], d.delivered)
        rejected.add_metric([d.id], d.rejected)
        failures.add_metric([d.id], d.failures)
        latency.add_metric([d.id], d.send_count, d.send_seconds_sum)
        refused.add_metric([d.id], int(d.refused is not None))
        held.add_metric([d.id], int(d.held))
    yield from (up, pending, delivered, rejected, failures, latency, refused, held)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class StatusEndpoints:
    """Answers ``/healthz``, ``/metrics`` and ``/status``; the board's server (:mod:`agent.ops.board.web`)
    serves them on ``[status] listen`` next to the board.

    ``snapshot`` is awaited once per request; requests may overlap, so it must be safe to await
    concurrently (the supervisor's ``Agent.snapshot`` only reads).
    """

    def __init__(self, snapshot: Callable[[], Awaitable[Snapshot]]) -> None:
        self._snapshot = snapshot
        self._collector = SnapshotCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)

    async def answer(self, method: str, path: str) -> Response:
        """The answer to ``method path`` (a GET or HEAD of one of the three paths)."""
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers={"allow": "GET"})
        path = path.split("?", 1)[0]
        if path not in ("/healthz", "/metrics", "/status"):
            return Response(404, b"not found: try /healthz, /metrics or /status\n")
        snap = await self._snapshot()
        if path == "/healthz":
            text = "ok\n" if snap.healthy else "".join(f"{p}\n" for p in snap.problems)
            return Response(200 if snap.healthy else 503, text.encode())
        if path == "/metrics":
            self._collector.snapshot = snap
            return Response(200, generate_latest(self._registry), "text/plain; version=0.0.4; charset=utf-8")
        return Response(200, json.dumps(asdict(snap), indent=2).encode() + b"\n", "application/json")
