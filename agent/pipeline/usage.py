"""The usage fold: what the maker learns from one machine, as a pure fold over what the agent observes.

::

    step(params, state, observation) -> (state, outputs)        no I/O, no clock: times come in

Observations, each at a wall-clock time (a time before one already seen counts as that one):

- :class:`Watch` the agent starts watching the machine (at start, or when a reload adds it). What
  happened since the machine's last observation was not watched (the agent was down).
- :class:`Seen` the agent watched the machine up to now (its clock: every few minutes, at each
  period's end and at a clean stop). It also names the machine's tool rules.
- :class:`Changed` one of the machine's alerts was raised, updated or cleared (the transitions the
  alert log commits; ``offline`` among them), with the fault code it is about, if any.
- :class:`ToolChanged` a ``tool_life`` or ``forecast`` rule saw its tool changed.

Outputs: a :class:`Summary` for every period that ended (periods are ``every`` seconds long,
aligned to the epoch, so to UTC midnight when ``every`` divides a day), and a :class:`ToolEvent`
for every tool change (with the tool's time in service and how long before the change the rule
had warned).

How time is counted: watched time, each active alert and each active fault code are spans whose
length is added up only at a few points: when the span ends (a clear, a new code), at a period's
end, and where watching stopped (at the next :class:`Watch`, the span ends at the machine's last
observation). So the state changes only at those observations, and the result is the same
whether the observations come in one list or several, and whether the state is stored and loaded
(:func:`to_json`, :func:`from_json`: an exact round trip) between any two of them. Offline time is
the time the machine's ``offline`` alert was active while watched; online time is the rest of the
watched time; the time not watched (the agent was down) is neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from agent.model import TransitionKind, split_key

OFFLINE = "offline"  # the rule id of a machine's communication alert (agent.pipeline.runner.OFFLINE)
DAY = 86400.0

Code = int | str  # a fault code (a code rule's number) or an OPC UA condition (its key part)


@dataclass(frozen=True, slots=True)
class Params:
    """``every``: the period in seconds; ``keep``: periods that ended longer ago are not summarised."""

    every: float = DAY
    keep: float = 90 * DAY


# -- observations ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Watch:
    time: float
    active: frozenset[str] = frozenset()  # the machine's active alert keys, as the alert log has them
    tools: frozenset[str] = frozenset()  # its tool rules (tool_life, forecast)


@dataclass(frozen=True, slots=True)
class Seen:
    time: float
    tools: frozenset[str] | None = None  # its tool rules now (None: as before)


@dataclass(frozen=True, slots=True)
class Changed:
    time: float
    key: str  # the alert: "<machine>/<rule>" or "<machine>/<rule>/<part>"
    kind: TransitionKind
    code: Code | None = None  # the fault code the alert is about now (raised / updated), if any
    text: str = ""  # what the code means


@dataclass(frozen=True, slots=True)
class ToolChanged:
    time: float
    rule: str
    tool: str  # the rule's name
    used: float | None  # the life the old tool used, in the signal's units (None: not known)
    limit: float | None  # its life in the same units


Observation = Watch | Seen | Changed | ToolChanged


# -- state ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tally:
    """An alert rule's period: raises, and seconds active (summed over its alerts)."""

    raised: int = 0
    active: float = 0.0


@dataclass(frozen=True, slots=True)
class CodeTally:
    rule: str
    code: Code
    text: str
    count: int = 0
    active: float = 0.0


@dataclass(frozen=True, slots=True)
class ToolTally:
    tool: str
    count: int = 0
    measured: int = 0  # changes whose life fraction is known
    total: float = 0.0  # the sum of those fractions
    least: float | None = None


@dataclass(frozen=True, slots=True)
class Period:
    start: float
    watched: float = 0.0
    alerts: Mapping[str, Tally] = field(default_factory=dict)  # by rule
    codes: Mapping[str, CodeTally] = field(default_factory=dict)  # by "<rule>/<code>"
    tools: Mapping[str, ToolTally] = field(default_factory=dict)  # by rule


@dataclass(frozen=True, slots=True)
class Open:
    """An active alert: counted up to ``since``; the fault code it is about, if any."""

    since: float
    code: str | None = None  # the key of its CodeTally
    value: Code | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class Tool:
    since: float  # in service since (the last change, or when first seen)
    warned: float | None = None  # the rule's first raise since then


@dataclass(frozen=True, slots=True)
class MachineUsage:
    """One machine's fold state. Invariant: ``period.start <= since values <= clock < period end``."""

    machine: str
    period: Period
    clock: float  # the latest observation's time: the machine was watched up to here
    watched_since: float  # watched time is counted up to here
    alerts: Mapping[str, Open] = field(default_factory=dict)  # active alerts by key
    tools: Mapping[str, Tool] = field(default_factory=dict)  # by rule


def period_start(t: float, every: float) -> float:
    """The start of the period ``t`` is in (periods aligned to the epoch: UTC midnight for a day)."""
    return math.floor(t / every) * every


def start(machine: str, params: Params, obs: Watch) -> MachineUsage:
    """The state of a machine seen for the first time (by a :class:`Watch`)."""
    t = obs.time
    fresh = MachineUsage(machine, Period(period_start(t, params.every)), t, t)
    state, _ = step(params, fresh, obs)
    return state


# -- outputs -------------------------------------------------------------------------------------------


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _secs(x: float) -> float:
    return round(x, 3)


def _fraction(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


@dataclass(frozen=True, slots=True)
class Summary:
    """One machine's period (or the period under way, up to ``end``)."""

    machine: str
    start: float
    end: float
    watched: float
    alerts: Mapping[str, Tally]
    codes: Mapping[str, CodeTally]
    tools: Mapping[str, ToolTally]

    def data(self) -> dict[str, Any]:
        """The ``andon.usage.summary`` event's fields (README, "What the maker learns")."""
        offline = self.alerts[OFFLINE].active if OFFLINE in self.alerts else 0.0
        return {
            "machine": self.machine,
            "period_start": rfc3339(self.start),
            "period_end": rfc3339(self.end),
            "online_seconds": _secs(max(0.0, self.watched - offline)),
            "offline_seconds": _secs(offline),
            "unobserved_seconds": _secs(max(0.0, self.end - self.start - self.watched)),
            "alerts": {rule: alert_data(a) for rule, a in self.alerts.items()},
            "codes": {key: code_data(c) for key, c in self.codes.items()},
            "tool_changes": {rule: tool_data(t) for rule, t in self.tools.items()},
        }


def alert_data(a: Tally) -> dict[str, Any]:
    return {"raised": a.raised, "active_seconds": _secs(a.active)}


def code_data(c: CodeTally) -> dict[str, Any]:
    return {"rule": c.rule, "code": c.code, "count": c.count, "active_seconds": _secs(c.active), "text": c.text}


def tool_data(t: ToolTally) -> dict[str, Any]:
    mean = t.total / t.measured if t.measured else None
    return {
        "tool": t.tool,
        "count": t.count,
        "mean_life_fraction": _fraction(mean),
        "min_life_fraction": _fraction(t.least),
    }


@dataclass(frozen=True, slots=True)
class ToolEvent:
    """One tool change, as ``andon.tool.changed`` tells it."""

    machine: str
    rule: str
    tool: str
    time: float
    used: float | None
    limit: float | None
    fraction: float | None
    in_service: float | None  # seconds since the previous change, or since first seen
    warned: float | None  # seconds between the rule's first raise since then and the change

    def data(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "rule": self.rule,
            "tool": self.tool,
            "life_used": self.used,
            "limit": self.limit,
            "life_fraction": _fraction(self.fraction),
            "in_service_seconds": None if self.in_service is None else _secs(self.in_service),
            "warned_seconds": None if self.warned is None else _secs(self.warned),
        }


Output = Summary | ToolEvent


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def summary_data(s: Summary) -> dict[str, Any]:
    """``data`` of an ``andon.usage.summary`` event (and of its row in ``usage_periods``)."""
    d = s.data()
    raised = sum(a["raised"] for a in d["alerts"].values())
    faults = sum(c["count"] for c in d["codes"].values())
    changes = sum(t["count"] for t in d["tool_changes"].values())
    message = (
        f"{s.machine} from {d['period_start']} to {d['period_end']}: online {_hours(d['online_seconds'])}, "
        f"offline {_hours(d['offline_seconds'])}, not watched {_hours(d['unobserved_seconds'])}; "
        f"{raised} alert(s) raised, {faults} fault code(s), {changes} tool change(s)"
    )
    return d | {"severity": "info", "message": message}


def tool_event_data(e: ToolEvent, signal: str | None = None) -> dict[str, Any]:
    """``data`` of an ``andon.tool.changed`` event (and of its row in ``usage_tool_changes``)."""
    d: dict[str, Any] = {**e.data(), "signal": signal}
    life = "of unknown life" if e.fraction is None else f"at {e.fraction:.0%} of its life"
    if e.used is not None and e.limit is not None and e.fraction is not None:
        life += f" ({e.used:g} of {e.limit:g})"
    from agent.rules.kinds import human_duration  # the rules' config models: not for `report`, which reads

    service = "" if e.in_service is None else f" after {human_duration(e.in_service).removeprefix('about ')} in service"
    if e.warned is None:
        warned = "with no warning before"
    else:
        warned = f"{human_duration(e.warned).removeprefix('about ')} after the first warning"
    d |= {"severity": "info", "message": f"{e.tool} on {e.machine} was changed {life}{service}, {warned}"}
    return d


# -- the fold ------------------------------------------------------------------------------------------


def fold(params: Params, state: MachineUsage, observations: Iterable[Observation]) -> tuple[MachineUsage, list[Output]]:
    """:func:`step` over several observations."""
    outputs: list[Output] = []
    for obs in observations:
        state, out = step(params, state, obs)
        outputs += out
    return state, outputs


def step(params: Params, state: MachineUsage, obs: Observation) -> tuple[MachineUsage, list[Output]]:
    """One observation: the new state, and the periods it closed and the tool change it made."""
    t = max(obs.time, state.clock)
    if isinstance(obs, Watch):
        return _watch(params, state, obs, t)
    state, outputs = _advance(params, state, t, counting=True)
    if isinstance(obs, Changed):
        state = _changed(state, obs, t)
    elif isinstance(obs, ToolChanged):
        state, event = _tool_changed(state, obs, t)
        outputs.append(event)
    elif obs.tools is not None:
        state = _with_tools(state, obs.tools, t)
    return replace(state, clock=t), outputs


def _watch(params: Params, state: MachineUsage, obs: Watch, t: float) -> tuple[MachineUsage, list[Output]]:
    """Watching starts again at ``t``: the spans end at the last observation, the periods in between
    close (not watched), and the alerts active now (as the alert log says) are counted from ``t``."""
    state = _count(state, state.clock)
    state, outputs = _advance(params, state, t, counting=False)
    alerts = {key: replace(state.alerts.get(key, Open(t)), since=t) for key in sorted(obs.active)}
    state = replace(state, clock=t, watched_since=t, alerts=alerts)
    return _with_tools(state, obs.tools, t), outputs


def _with_tools(state: MachineUsage, tools: frozenset[str], t: float) -> MachineUsage:
    """Tool rules not seen before are in service from ``t``; rules no longer there are forgotten."""
    if tools == state.tools.keys():
        return state
    return replace(state, tools={rule: state.tools.get(rule, Tool(t)) for rule in sorted(tools)})


def _count(state: MachineUsage, b: float) -> MachineUsage:
    """Add every span's time up to ``b`` (within the period) to the period's tallies."""
    p = state.period
    alerts, codes = dict(p.alerts), dict(p.codes)
    for key, o in state.alerts.items():
        _, rule, _ = split_key(key)
        a = alerts.get(rule, Tally())
        alerts[rule] = Tally(a.raised, a.active + (b - o.since))
        if o.code is not None:
            c = codes.get(o.code) or CodeTally(rule, o.value if o.value is not None else "", o.text)
            codes[o.code] = replace(c, active=c.active + (b - o.since))
    period = replace(p, watched=p.watched + (b - state.watched_since), alerts=alerts, codes=codes)
    opened = {key: replace(o, since=b) for key, o in state.alerts.items()}
    return replace(state, period=period, watched_since=b, alerts=opened)


def _advance(params: Params, state: MachineUsage, t: float, *, counting: bool) -> tuple[MachineUsage, list[Output]]:
    """Close every period that ended by ``t``; ``counting``: the machine was watched until then."""
    outputs: list[Output] = []
    while state.period.start + params.every <= t:
        end = state.period.start + params.every
        if counting:
            state = _count(state, end)
        p = state.period
        if end > t - params.keep:  # an older period would be pruned at once: not summarised
            outputs.append(Summary(state.machine, p.start, end, p.watched, p.alerts, p.codes, p.tools))
        nxt = max(end, period_start(t - params.keep, params.every))
        opened = {key: replace(o, since=max(o.since, nxt)) for key, o in state.alerts.items()}
        state = replace(state, period=Period(nxt), watched_since=max(state.watched_since, nxt), alerts=opened)
    return state, outputs


def _code_key(rule: str, code: Code) -> str:
    return f"{rule}/{code}"


def _open(state: MachineUsage, key: str, rule: str, obs: Changed, t: float) -> MachineUsage:
    """Start counting alert ``key`` (and its fault code, a new occurrence of it) from ``t``."""
    codes = state.period.codes
    code_key = None
    if obs.code is not None:
        code_key = _code_key(rule, obs.code)
        c = codes.get(code_key) or CodeTally(rule, obs.code, obs.text)
        codes = {**codes, code_key: replace(c, count=c.count + 1, text=obs.text or c.text)}
    alerts = {**state.alerts, key: Open(t, code_key, obs.code, obs.text)}
    return replace(state, period=replace(state.period, codes=codes), alerts=alerts)


def _close(state: MachineUsage, key: str, rule: str, t: float) -> MachineUsage:
    """Stop counting alert ``key`` at ``t``: its time (and its code's) goes to the period."""
    o = state.alerts[key]
    p = state.period
    a = p.alerts.get(rule, Tally())
    alerts = {**p.alerts, rule: Tally(a.raised, a.active + (t - o.since))}
    codes = p.codes
    if o.code is not None:
        c = codes.get(o.code) or CodeTally(rule, o.value if o.value is not None else "", o.text)
        codes = {**codes, o.code: replace(c, active=c.active + (t - o.since))}
    rest = {k: v for k, v in state.alerts.items() if k != key}
    return replace(state, period=replace(p, alerts=alerts, codes=codes), alerts=rest)


def _changed(state: MachineUsage, obs: Changed, t: float) -> MachineUsage:
    _, rule, _ = split_key(obs.key)
    if obs.kind is TransitionKind.CLEARED:
        return _close(state, obs.key, rule, t) if obs.key in state.alerts else state
    current = state.alerts.get(obs.key)
    if obs.kind is TransitionKind.UPDATED and current is not None:
        if obs.code is None or _code_key(rule, obs.code) == current.code:
            return state  # a new severity or message, or a repeat: the same spell
        return _open(_close(state, obs.key, rule, t), obs.key, rule, obs, t)  # another fault code
    if current is not None:
        state = _close(state, obs.key, rule, t)
    if obs.kind is TransitionKind.RAISED:
        a = state.period.alerts.get(rule, Tally())
        alerts = {**state.period.alerts, rule: Tally(a.raised + 1, a.active)}
        state = replace(state, period=replace(state.period, alerts=alerts))
        tool = state.tools.get(rule)
        if tool is not None and tool.warned is None:
            state = replace(state, tools={**state.tools, rule: Tool(tool.since, t)})
    return _open(state, obs.key, rule, obs, t)


def _tool_changed(state: MachineUsage, obs: ToolChanged, t: float) -> tuple[MachineUsage, ToolEvent]:
    before = state.tools.get(obs.rule)
    fraction = obs.used / obs.limit if obs.used is not None and obs.limit else None
    event = ToolEvent(
        state.machine,
        obs.rule,
        obs.tool,
        t,
        obs.used,
        obs.limit,
        fraction,
        None if before is None else t - before.since,
        None if before is None or before.warned is None else t - before.warned,
    )
    tally = state.period.tools.get(obs.rule) or ToolTally(obs.tool)
    if fraction is not None:
        least = fraction if tally.least is None else min(tally.least, fraction)
        tally = ToolTally(obs.tool, tally.count + 1, tally.measured + 1, tally.total + fraction, least)
    else:
        tally = ToolTally(obs.tool, tally.count + 1, tally.measured, tally.total, tally.least)
    period = replace(state.period, tools={**state.period.tools, obs.rule: tally})
    return replace(state, period=period, tools={**state.tools, obs.rule: Tool(t)}), event


def so_far(state: MachineUsage) -> Summary:
    """The period under way, up to the machine's last observation (nothing is changed)."""
    counted = _count(state, state.clock)
    p = counted.period
    return Summary(state.machine, p.start, state.clock, p.watched, p.alerts, p.codes, p.tools)


# -- storing the state -------------------------------------------------------------------------------


def to_json(state: MachineUsage) -> dict[str, Any]:
    """The state as JSON-able data; :func:`from_json` gives back an equal state (floats exactly)."""
    p = state.period
    return {
        "machine": state.machine,
        "clock": state.clock,
        "watched_since": state.watched_since,
        "period": {
            "start": p.start,
            "watched": p.watched,
            "alerts": {k: [a.raised, a.active] for k, a in p.alerts.items()},
            "codes": {k: [c.rule, c.code, c.text, c.count, c.active] for k, c in p.codes.items()},
            "tools": {k: [t.tool, t.count, t.measured, t.total, t.least] for k, t in p.tools.items()},
        },
        "alerts": {k: [o.since, o.code, o.value, o.text] for k, o in state.alerts.items()},
        "tools": {k: [t.since, t.warned] for k, t in state.tools.items()},
    }


def from_json(doc: Mapping[str, Any]) -> MachineUsage:
    p = doc["period"]
    period = Period(
        p["start"],
        p["watched"],
        {k: Tally(raised, active) for k, (raised, active) in p["alerts"].items()},
        {k: CodeTally(*v) for k, v in p["codes"].items()},
        {k: ToolTally(*v) for k, v in p["tools"].items()},
    )
    return MachineUsage(
        doc["machine"],
        period,
        doc["clock"],
        doc["watched_since"],
        {k: Open(*v) for k, v in doc["alerts"].items()},
        {k: Tool(since, warned) for k, (since, warned) in doc["tools"].items()},
    )
