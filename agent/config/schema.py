"""The whole config: :class:`Config`, assembled from the plugin lists, and the cross-checks.

The ``[[machines]]`` union is made from :data:`drivers.registry.PROTOCOLS` (each protocol's model,
told apart by ``protocol``) and the ``[[sinks]]`` union from :data:`agent.sinks.registry.SINKS`
(told apart by ``kind``): adding a protocol or a sink changes those lists, not this module. What one
model cannot check alone is checked here, after validation: unique ids, rules naming machines and
signals that exist and fit their kind, and each protocol's own check across its machines.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from agent.config.base import MachineBase, StrictModel
from agent.config.rules import RESERVED_RULE_IDS, AlarmsRule, Rule, StaleRule
from agent.config.sections import AgentSection, AlertsSection, LightConfig, OutboxSection, StatusSection, UsageSection
from agent.sinks.base import Origin, SinkConfigBase
from agent.sinks.registry import SINKS, sink_plugin
from drivers.registry import PROTOCOLS


def _union(models: Sequence[type[Any]], tag: str) -> Any:
    """``Annotated[A | B | ..., Field(discriminator=tag)]`` for pydantic, from a list of models."""
    return Annotated[functools.reduce(operator.or_, models), Field(discriminator=tag)]


if TYPE_CHECKING:  # mypy sees the base models; pydantic validates against the registered ones
    AnyMachine = MachineBase
    AnySink = SinkConfigBase
else:
    AnyMachine = _union([p.config for p in PROTOCOLS], "protocol")
    AnySink = _union([s.config for s in SINKS], "kind")


class Config(StrictModel):
    agent: AgentSection = AgentSection()
    machines: list[AnyMachine] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    alerts: AlertsSection = AlertsSection()
    status: StatusSection = StatusSection()
    outbox: OutboxSection = OutboxSection()
    usage: UsageSection = UsageSection()
    sinks: list[AnySink] = Field(default_factory=list)
    lights: list[LightConfig] = Field(default_factory=list)

    def machine(self, machine_id: str) -> MachineBase:
        return next(m for m in self.machines if m.id == machine_id)


# A rule kind -> the kinds of signal value it cannot judge (a signal of unknown kind always passes).
_REFUSED_VALUES = {
    "threshold": ("bool", "text"),
    "tool_life": ("bool", "text"),
    "forecast": ("bool", "text"),
    "code": ("bool",),
}


def _unique(items: Sequence[Any], path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            errors.append((f"{path}[{i}].id", f"duplicate id {item.id!r}"))
        seen.add(item.id)
    return errors


def _rule_checks(ri: int, r: Rule, machines: dict[str, MachineBase]) -> list[tuple[str, str]]:
    target = machines.get(r.machine)
    if target is None:
        return [(f"rules[{ri}].machine", f"no machine with id {r.machine!r}")]
    errors: list[tuple[str, str]] = []
    if r.id in RESERVED_RULE_IDS:
        errors.append((f"rules[{ri}].id", f"{r.id!r} is the id of the agent's own {r.id} alert; choose another"))
    if isinstance(r, AlarmsRule):
        if not target.has_alarms:
            why = f"machine {target.id!r} is {target.protocol}: only an OPC UA machine reports its own alarms"
            errors.append((f"rules[{ri}].machine", why))
        return errors
    signal = next((s for s in target.signals if s.id == r.signal), None)
    if signal is None:
        errors.append((f"rules[{ri}].signal", f"machine {target.id!r} has no signal {r.signal!r}"))
    elif signal.value_kind in _REFUSED_VALUES.get(r.kind, ()):
        if r.kind == "code":
            errors.append((f"rules[{ri}].signal", f"a code rule needs a number; {r.signal!r} is {signal.type_name}"))
        else:
            need = f"a {r.kind} rule needs a numeric signal"
            errors.append((f"rules[{ri}].signal", f"{need}; {r.signal!r} is {signal.type_name}"))
    gate = r.only_while if isinstance(r, StaleRule) else None
    if gate is not None and not any(s.id == gate for s in target.signals):
        errors.append((f"rules[{ri}].only_while", f"machine {target.id!r} has no signal {gate!r}"))
    return errors


def cross_checks(cfg: Config) -> list[tuple[str, str]]:
    """What the models cannot check alone, as (key path, problem) pairs, in the file's order."""
    errors = _unique(cfg.machines, "machines") + _unique(cfg.rules, "rules") + _unique(cfg.sinks, "sinks")
    for protocol in PROTOCOLS:
        errors += protocol.cross_check([(i, m) for i, m in enumerate(cfg.machines) if m.protocol == protocol.name])
    for mi, m in enumerate(cfg.machines):
        errors += _unique(m.signals, f"machines[{mi}].signals")
    machines = {m.id: m for m in cfg.machines}
    for ri, r in enumerate(cfg.rules):
        errors += _rule_checks(ri, r, machines)
    origin = Origin(cfg.agent.gateway_id, cfg.agent.site)
    for si, s in enumerate(cfg.sinks):
        for mi, machine in enumerate(s.machines or ()):
            if machine not in machines:
                errors.append((f"sinks[{si}].machines[{mi}]", f"no machine with id {machine!r}"))
        check = sink_plugin(s.kind).cross_check
        if check is not None:
            errors += [(f"sinks[{si}].{key}", problem) for key, problem in check(s, origin)]
    errors += _unique(cfg.lights, "lights")
    for li, light in enumerate(cfg.lights):
        for i, mid in enumerate(light.machines or ()):
            if mid not in machines:
                errors.append((f"lights[{li}].machines[{i}]", f"no machine with id {mid!r}"))
    return errors
