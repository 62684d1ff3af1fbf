"""The config's own sections: ``[agent]``, ``[alerts]``, ``[status]`` and ``[outbox]``."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator

from agent.config.base import DEFAULT_STATE_DIR, ByteSize, Duration, Id, StrictModel


class AgentSection(StrictModel):
    gateway_id: Id = Field(default_factory=socket.gethostname)
    site: str | None = None
    state_dir: Path = DEFAULT_STATE_DIR


class AlertsSection(StrictModel):
    """Flood handling (EEMUA 191: more than 10 alarms in 10 minutes per operator is a flood)."""

    flood_count: int = Field(default=10, ge=0)  # raises per machine in flood_window; 0 turns it off
    flood_window: Duration = Field(default=600.0, gt=0)


class StatusSection(StrictModel):
    listen: str | None = "127.0.0.1:9108"  # "host:port"; empty string or null turns it off

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str | None) -> str | None:
        if not listen:
            return listen
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f'not "host:port": {listen!r} (e.g. "127.0.0.1:9108"; "" turns it off)')
        return listen


class OutboxSection(StrictModel):
    max_events: int = Field(default=100_000, ge=100)  # queued events; when full the oldest non-critical go
    max_bytes: ByteSize = Field(default=64 * 2**20, ge=2**20)  # queued event bodies ("64MiB", "500MB" or bytes)
    max_dead_letters: int = Field(default=10_000, ge=1)  # the oldest dead letters go beyond this
    batch_size: int = Field(default=500, ge=1, le=10_000)  # events per request (halved after a 413)
    linger: Duration = Field(default=0.05, le=60)  # a partial batch waits this long after the last request
