"""What the status endpoints show: one :class:`Snapshot` of the running agent, plain data.

The pipeline takes it (:mod:`agent.pipeline.snapshot`); :mod:`agent.ops.status` only renders it, so
``ops/`` needs nothing of the pipeline. Times are RFC 3339 strings, durations seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    refused: int | None = None  # the HTTP status while the endpoint or the credentials refuse every request
    held: bool = False  # the queue waits: dead letters are at max_dead_letters


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
