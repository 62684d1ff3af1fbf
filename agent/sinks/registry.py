"""The one list of sink kinds.

Adding a sink: write ``agent/sinks/<kind>.py`` with its config model (a
:class:`~agent.sinks.base.SinkConfigBase` with ``kind: Literal["<kind>"]``), its sink class and its
``PLUGIN`` (a :class:`~agent.sinks.base.SinkPlugin`), and add the plugin to :data:`SINKS`. Nothing
else central changes: the config schema, ``check``, the runtime and the outbox command read this list.
"""

from __future__ import annotations

from typing import Any

from agent.sinks.base import SinkPlugin
from agent.sinks.http import PLUGIN as HTTP
from agent.sinks.mqtt import PLUGIN as MQTT
from agent.sinks.ntfy import PLUGIN as NTFY
from agent.sinks.pagerduty import PLUGIN as PAGERDUTY

SINKS: tuple[SinkPlugin[Any], ...] = (HTTP, NTFY, PAGERDUTY, MQTT)


def sink_plugin(kind: str) -> SinkPlugin[Any]:
    """The plugin of a configured sink's ``kind`` (the config only holds registered ones)."""
    return next(s for s in SINKS if s.kind == kind)
