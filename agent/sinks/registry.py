"""The one list of sinks. Adding a sink: write ``agent/sinks/<kind>.py`` with its ``PLUGIN`` and add
it here; nothing else central changes (the config schema is built from this list)."""

from __future__ import annotations

from agent.sinks.base import SinkPlugin
from agent.sinks.http import PLUGIN as HTTP

SINKS: tuple[SinkPlugin, ...] = (HTTP,)
