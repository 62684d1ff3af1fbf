"""The config: schema, loading and one-line errors (the README and config/example.toml describe the keys).

Everything is validated at load time: unknown keys are errors, ids are unique, rules name machines
and signals that exist. :func:`load_config` raises :class:`~agent.errors.ConfigError` whose text is
one line: ``<file>: <key path>: <problem>``.

::

    base.py      the shared vocabulary (durations, sizes, ids, the strict model, MachineBase,
                 SignalBase, KeyProblem); drivers and sinks build their models on it
    rules.py     the rule models, one per kind, and their message template fields
    sections.py  [agent], [alerts], [status], [outbox], [[lights]]
    schema.py    Config: machines and sinks from the plugin lists (drivers.registry,
                 agent.sinks.registry); the cross-checks
    load.py      load_config / parse_config: TOML -> Config, or a one-line ConfigError

A protocol's machine model lives with its driver (``drivers.modbus.config.ModbusMachine``) and a
sink's model with its sink (``agent.sinks.http.HttpSinkConfig``); import them from there.
``Config``, ``load_config`` and ``parse_config`` are imported on first use: the schema imports
the plugin lists, whose models import :mod:`agent.config.base`, so importing this package must not
import the schema first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.config.base import (
    ByteSize,
    Duration,
    Id,
    KeyProblem,
    MachineBase,
    SeverityName,
    SignalBase,
    StrictModel,
    ValueKind,
    parse_duration,
    parse_size,
)
from agent.config.rules import (
    KIND_TEMPLATE_FIELDS,
    RESERVED_RULE_IDS,
    TEMPLATE_FIELDS,
    AlarmsRule,
    CodeEntry,
    CodeRule,
    FaultRule,
    ForecastRule,
    Rule,
    RuleBase,
    SignalRule,
    StaleRule,
    ThresholdRule,
    ToolLifeRule,
    template_fields_for,
)
from agent.config.sections import (
    LAMP_NAMES,
    AgentSection,
    AlertsSection,
    Lamp,
    LightConfig,
    OutboxSection,
    StatusSection,
    UsageSection,
)

if TYPE_CHECKING:
    from agent.config.load import load_config, parse_config
    from agent.config.schema import Config

__all__ = [
    "KIND_TEMPLATE_FIELDS",
    "LAMP_NAMES",
    "RESERVED_RULE_IDS",
    "TEMPLATE_FIELDS",
    "AgentSection",
    "AlarmsRule",
    "AlertsSection",
    "ByteSize",
    "CodeEntry",
    "CodeRule",
    "Config",
    "Duration",
    "FaultRule",
    "ForecastRule",
    "Id",
    "KeyProblem",
    "Lamp",
    "LightConfig",
    "MachineBase",
    "OutboxSection",
    "Rule",
    "RuleBase",
    "SeverityName",
    "SignalBase",
    "SignalRule",
    "StaleRule",
    "StatusSection",
    "StrictModel",
    "ThresholdRule",
    "ToolLifeRule",
    "UsageSection",
    "ValueKind",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "template_fields_for",
]


if not TYPE_CHECKING:  # (hidden from mypy, which would otherwise take any name as importable)

    def __getattr__(name: str) -> Any:
        if name == "Config":
            from agent.config.schema import Config

            return Config
        if name in ("load_config", "parse_config"):
            from agent.config import load

            return getattr(load, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
