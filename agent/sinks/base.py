"""What every sink shares: the base of its config model and its entry in :mod:`agent.sinks.registry`."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from agent.config.base import Duration, Id, StrictModel


class SinkConfigBase(StrictModel):
    """What every ``[[sinks]]`` entry has. A sink's model adds ``kind: Literal["<kind>"]`` and its own keys."""

    id: Id
    kind: str
    timeout: Duration = Field(default=10.0, gt=0)  # one delivery request, start to end
    retry_max: Duration = Field(default=60.0, gt=0)  # cap of the retry backoff


@dataclass(frozen=True)
class SinkPlugin:
    """What the agent knows of one sink kind: ``kind`` is the value of ``kind`` in the config,
    ``config`` the sink's model (a :class:`SinkConfigBase` with ``kind: Literal[kind]``)."""

    kind: str
    config: type[SinkConfigBase]
