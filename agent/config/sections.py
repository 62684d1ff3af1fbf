"""The config's own sections: ``[agent]``, ``[alerts]``, ``[status]``, ``[outbox]``, ``[usage]`` and ``[[lights]]``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import DEFAULT_STATE_DIR, ByteSize, Duration, Id, KeyProblem, StrictModel


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
    ack_token_env: str | None = None  # acknowledgement on the board: the bearer token from this variable ...
    ack_token_file: Path | None = None  # ... or from this file; without either nothing can be acknowledged

    @model_validator(mode="after")
    def _one_token_source(self) -> StatusSection:
        if self.ack_token_env and self.ack_token_file:
            raise KeyProblem("ack_token_file", "give ack_token_env or ack_token_file, not both")
        return self

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


DAY = 86400.0


class UsageSection(StrictModel):
    """What the maker learns (README, "What the maker learns"): tool changes and usage summaries."""

    enabled: bool = True  # false: nothing is collected and nothing is sent
    send: bool = True  # false: collected for `andon-agent report` and the board only; no event is sent
    summary_every: Duration = Field(default=DAY, ge=1)  # the period of andon.usage.summary, aligned to UTC midnight
    keep: Duration = Field(default=90 * DAY, gt=0)  # the local history `report` reads

    @field_validator("summary_every")
    @classmethod
    def _check_every(cls, every: float) -> float:
        if not every.is_integer() or (DAY % every and every % DAY):
            raise ValueError(
                f"must divide a day or be whole days, so that periods start at UTC midnight (got {every:g} s; "
                'e.g. "1h", "8h", "24h", "7d")'
            )
        return every

    @model_validator(mode="after")
    def _check_keep(self) -> UsageSection:
        if self.keep < self.summary_every:
            raise KeyProblem("keep", "must be at least one summary_every: the history holds whole periods")
        return self


class Lamp(StrictModel):
    """One lamp (or the buzzer) of a stack light: a coil, or a holding register written 1/0."""

    table: Literal["coil", "holding"] = Field(default="coil", alias="register")
    address: int = Field(ge=0, le=65535)


LAMP_NAMES = ("red", "yellow", "green", "blue", "buzzer")


class LightConfig(StrictModel):
    """A Modbus TCP signal tower (or I/O module) that shows the alerts: the only device the agent writes."""

    id: Id
    protocol: Literal["modbus"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    write: bool = False  # must be true: the agent writes to no device the config does not allow
    machines: list[Id] | None = None  # whose alerts it shows; default all
    timeout: Duration = Field(default=1.0, gt=0, le=30)  # one write
    red: Lamp
    yellow: Lamp
    green: Lamp
    blue: Lamp | None = None
    buzzer: Lamp | None = None

    @model_validator(mode="after")
    def _check(self) -> LightConfig:
        if not self.write:
            raise KeyProblem(
                "write",
                f"stack light {self.id!r} writes to a device: set write = true to allow it "
                "(the agent writes nowhere else)",
            )
        seen: dict[tuple[str, int], str] = {}
        for name in LAMP_NAMES:
            lamp: Lamp | None = getattr(self, name)
            if lamp is None:
                continue
            other = seen.setdefault((lamp.table, lamp.address), name)
            if other != name:
                raise KeyProblem(name, f"{name} and {other} are both {lamp.table} {lamp.address}")
        return self
