"""The rules' config models: one per ``kind``, on a shared :class:`RuleBase` (severity, message
template, delays, repeat, chattering), and the fields each kind's message template may use.

The cross-checks against machines and signals (a rule names a machine and a signal that exist, a
numeric kind needs a numeric signal) live in :mod:`agent.config.schema`.
"""

from __future__ import annotations

import math
import re
import string
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import Duration, Id, KeyProblem, SeverityName, StrictModel

# The fields every rule's `message` template may use (agent.rules fills them in) ...
TEMPLATE_FIELDS = frozenset(
    {"machine", "signal", "name", "rule", "value", "threshold", "unit", "severity", "action", "note"}
)
# ... and each kind's own fields.
KIND_TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "threshold": frozenset(),
    "fault": frozenset(),
    "code": frozenset({"code", "code_text"}),
    "tool_life": frozenset({"remaining", "limit"}),
    "forecast": frozenset({"limit", "eta", "seconds_to_limit", "trend"}),
    "stale": frozenset({"unchanged_for", "after"}),
}


def template_fields_for(kind: str) -> frozenset[str]:
    """The fields a ``message`` template of a rule of this kind may use."""
    return TEMPLATE_FIELDS | KIND_TEMPLATE_FIELDS[kind]


class LifecycleBase(StrictModel):
    """What every rule has: its id, its machine, and the shared alert lifecycle (delays, repeat, chattering)."""

    id: Id
    machine: Id
    on_delay: Duration = 0.0
    off_delay: Duration = 0.0
    repeat_every: Duration | None = Field(default=None, gt=0)
    # Chattering (ISA-18.2: 3 or more alarms in 1 minute): the chatter_count-th raise within
    # chatter_window holds the alert active until its condition stayed normal for chatter_window.
    chatter_count: int = Field(default=3, ge=0)  # 0 turns it off
    chatter_window: Duration = Field(default=60.0, gt=0)

    @field_validator("chatter_count")
    @classmethod
    def _check_chatter_count(cls, count: int) -> int:
        if count == 1:
            raise ValueError("must be 0 (off) or at least 2: one raise is not chattering")
        return count


class RuleBase(LifecycleBase):
    """A rule that judges one signal's values."""

    signal: Id
    severity: SeverityName = "warning"
    name: str | None = Field(default=None, min_length=1)  # what is watched, in words ("tool 1"); default: signal
    message: str | None = None  # template: {machine} {signal} {value} {threshold} {unit} ... (KIND_TEMPLATE_FIELDS)

    @field_validator("message")
    @classmethod
    def _check_message(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            list(string.Formatter().parse(template))
        except ValueError as exc:  # a lone "{" or "}"
            raise ValueError(f"not a valid template: {exc} (write {{{{ and }}}} for literal braces)") from None
        return template

    @model_validator(mode="after")
    def _check_template(self) -> RuleBase:
        if self.message is None:
            return self
        known = template_fields_for(str(getattr(self, "kind", "fault")))
        allowed = ", ".join("{" + f + "}" for f in sorted(known))
        for _, name, _, _ in string.Formatter().parse(self.message):
            if name is not None and name not in known:
                raise KeyProblem("message", f"unknown template field {{{name}}}; use {allowed}")
        return self


class ThresholdRule(RuleBase):
    kind: Literal["threshold"]
    warning: float | None = None
    critical: float | None = None
    deadband: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ThresholdRule:
        if self.warning is None and self.critical is None:
            raise ValueError("a threshold rule needs `warning`, `critical` or both")
        for name in ("warning", "critical", "deadband"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise KeyProblem(name, f"`{name}` must be a finite number")
        if self.warning is not None and self.critical is not None and self.warning > self.critical:
            raise KeyProblem("warning", f"`warning` ({self.warning}) must not be above `critical` ({self.critical})")
        return self


class FaultRule(RuleBase):
    kind: Literal["fault"]
    severity: SeverityName = "critical"


class CodeEntry(StrictModel):
    message: str = Field(min_length=1)  # what the code means, and what to do
    severity: SeverityName | None = None  # default: the rule's severity


class CodeRule(RuleBase):
    """A fault-code register: codes in ``normal`` mean no fault; every other code alerts."""

    kind: Literal["code"]
    normal: list[int] = Field(default=[0], min_length=1)
    codes: dict[int, CodeEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> CodeRule:
        both = sorted(set(self.normal) & set(self.codes))
        if both:
            raise KeyProblem("codes", f"code {both[0]} is also in `normal`; a code is either a fault or normal")
        return self


class ToolLifeRule(RuleBase):
    """A tool-life counter: counting up to ``limit`` (or down to it, ``direction = "down"``)."""

    kind: Literal["tool_life"]
    limit: float | None = None  # required counting up; counting down the default is 0
    warning_remaining: float | None = Field(default=None, ge=0)
    direction: Literal["up", "down"] = "up"

    @model_validator(mode="after")
    def _check(self) -> ToolLifeRule:
        if self.limit is None and self.direction == "up":
            raise KeyProblem("limit", "a tool_life rule counting up needs `limit` (the tool's life in counter units)")
        for key in ("limit", "warning_remaining"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise KeyProblem(key, f"`{key}` must be a finite number")
        return self

    @property
    def end(self) -> float:
        """The counter value at which the tool's life is used up."""
        return 0.0 if self.limit is None else self.limit


class ForecastRule(RuleBase):
    """Warns when the least-squares trend of the last ``window`` reaches ``limit`` within ``horizon``."""

    kind: Literal["forecast"]
    limit: float
    horizon: Duration = Field(gt=0)
    window: Duration = Field(default=600.0, gt=0)
    min_points: int = Field(default=10, ge=3)  # fewer points in the window: no forecast
    min_r2: float = Field(default=0.7, ge=0, le=1)  # the fit must explain this much of the variance to raise
    change_drop: float | None = Field(default=None, gt=0)  # a fall this big is a tool change; default limit/10

    @model_validator(mode="after")
    def _check(self) -> ForecastRule:
        for key in ("limit", "change_drop"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise KeyProblem(key, f"`{key}` must be a finite number")
        return self

    @property
    def drop(self) -> float:
        """A fall of the signal by more than this is a tool change: the history starts again."""
        return self.change_drop if self.change_drop is not None else max(abs(self.limit) / 10, 1e-9)


class StaleRule(RuleBase):
    """A signal that should change but has not for ``after`` (a frozen counter, a dead sensor)."""

    kind: Literal["stale"]
    after: Duration = Field(gt=0)
    tolerance: float = Field(default=0.0, ge=0)  # changes this small or smaller do not count
    only_while: Id | None = None  # a signal of the same machine: staleness counts only while it is true


_NODE_ID = re.compile(r"^(nsu=[^;]+;|ns=\d+;)?[isgb]=.+$")


class AlarmsRule(LifecycleBase):
    """The machine's own alarms (OPC UA Alarms & Conditions): every condition it raises is its own alert.

    No signal, severity or message: each condition brings its own (OPC UA severity 1-1000 maps to
    info / warning / critical, its message is the alarm's text). See :mod:`agent.rules.alarms`.
    """

    kind: Literal["alarms"]
    source: str = "i=2253"  # the event notifier subscribed to: by default the Server object
    min_severity: int = Field(default=1, ge=1, le=1000)  # OPC UA severity below which alarms are ignored

    @model_validator(mode="before")
    @classmethod
    def _no_signal_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("signal", "severity", "message", "name"):
                if key in data:
                    raise KeyProblem(key, f"an alarms rule has no `{key}`: each alarm of the machine brings its own")
        return data

    @field_validator("source")
    @classmethod
    def _check_source(cls, source: str) -> str:
        if not _NODE_ID.match(source):
            raise ValueError(
                f'must be an OPC UA node id like "i=2253", "ns=2;s=Area1" or "nsu=<uri>;s=Area1" (got {source!r})'
            )
        return source

    @property
    def signal(self) -> None:
        """An alarms rule watches no signal (its transitions carry ``signal`` null)."""
        return None


SignalRule = ThresholdRule | FaultRule | CodeRule | ToolLifeRule | ForecastRule | StaleRule  # rules on one signal

Rule = Annotated[
    ThresholdRule | FaultRule | CodeRule | ToolLifeRule | ForecastRule | StaleRule | AlarmsRule,
    Field(discriminator="kind"),
]

# The agent's own alerts: "<machine>/offline", "<machine>/flood", "<machine>/unreadable".
RESERVED_RULE_IDS = frozenset({"offline", "flood", "unreadable"})
