"""The usage fold's shell: each machine's fold state in memory, and what one commit writes with it.

::

    AlertLog.commit(transitions, tool changes) --UsageLog.observe--> UsageStep: new states, outputs
        one transaction: the alert events + andon.tool.changed / andon.usage.summary events
                         + usage_state rows (+ usage_periods, usage_tool_changes rows; pruning)
        then UsageLog.apply(step): the states in memory follow what the disk holds

The fold (:mod:`agent.pipeline.usage`) is pure; this module turns its observations and outputs
into rows and events. It is driven by :class:`~agent.pipeline.alertlog.AlertLog` under its lock,
so its states change only after the transaction that stores them committed (a failed or cancelled
commit leaves them as they were, like the alert state). Rows change only at transitions, tool
changes and the clock (:data:`HEARTBEAT`, and each period's end): never per sample.

Tables (in the outbox's file): ``usage_state`` (machine, clock, the fold state as JSON),
``usage_periods`` (each closed period's summary, exactly the event's data without ``seq``,
``gateway`` and ``site``), ``usage_tool_changes`` (each tool change's data). The history is pruned
to ``[usage] keep`` whenever a period closes, and by the outbox's upkeep
(:mod:`agent.pipeline.upkeep`: at start and after a reload, also with the fold off).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.config.rules import Rule
from agent.config.sections import UsageSection
from agent.errors import OutboxError
from agent.model import Transition, TransitionKind
from agent.ops.logs import Trouble
from agent.pipeline.usage import (
    Changed,
    MachineUsage,
    Observation,
    Output,
    Params,
    Seen,
    Summary,
    ToolChanged,
    Watch,
    fold,
    from_json,
    period_start,
    start,
    summary_data,
    to_json,
    tool_event_data,
)

log = logging.getLogger("andon.usage")

HEARTBEAT = 300.0  # seconds between two "still watching" marks (what a crash can lose of watched time)
TOOL_CHANGED = "andon.tool.changed"
USAGE_SUMMARY = "andon.usage.summary"
TOOL_KINDS = ("tool_life", "forecast")

ToolRules = Mapping[str, str]  # a machine's tool rules (tool_life, forecast): rule id -> signal id


@dataclass(frozen=True, slots=True)
class Record:
    """A usage event to commit: its type, subject, ``data`` (without ``seq``, ``gateway``, ``site``) and time."""

    type: str
    subject: str
    data: dict[str, Any]
    time: float  # the event's time: the change, or the period's end
    start: float = 0.0  # a summary's period start


@dataclass(slots=True)
class UsageStep:
    """What one commit does to the usage fold: the machines' new states, and the fold's outputs."""

    states: dict[str, MachineUsage] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)  # the fold's outputs as events, in order
    send: bool = True  # commit the records as events (False: the history rows only)
    prune_before: float | None = None  # history older than this goes (a period closed)
    watched: frozenset[str] | None = None  # the machines watched from now on (None: as before)

    @property
    def events(self) -> list[Record]:
        """The events to commit (none with ``[usage] send = false``)."""
        return self.records if self.send else []

    @property
    def tool_changes(self) -> list[Record]:
        return [r for r in self.records if r.type == TOOL_CHANGED]

    def write(self, db: sqlite3.Connection) -> None:
        """The rows, inside the commit's transaction."""
        db.executemany(
            "INSERT OR REPLACE INTO usage_state (machine, clock, state) VALUES (?, ?, ?)",
            [(m, s.clock, _dumps(to_json(s))) for m, s in self.states.items()],
        )
        db.executemany(
            "INSERT OR IGNORE INTO usage_periods (machine, period_start, period_end, summary) VALUES (?, ?, ?, ?)",
            [(r.subject, r.start, r.time, _dumps(r.data)) for r in self.records if r.type == USAGE_SUMMARY],
        )
        db.executemany(
            "INSERT INTO usage_tool_changes (machine, rule, time, data) VALUES (?, ?, ?, ?)",
            [(r.data["machine"], r.data["rule"], r.time, _dumps(r.data)) for r in self.tool_changes],
        )
        if self.prune_before is not None:
            prune(db, self.prune_before)


def _dumps(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))


def prune(db: sqlite3.Connection, before: float) -> None:
    """Forget the history older than ``before``, and machines not watched since then."""
    db.execute("DELETE FROM usage_periods WHERE period_end <= ?", (before,))
    db.execute("DELETE FROM usage_tool_changes WHERE time < ?", (before,))
    db.execute("DELETE FROM usage_state WHERE clock < ?", (before,))


def tool_rules(machines: Iterable[str], rules: Iterable[Rule]) -> dict[str, dict[str, str]]:
    """Each machine's tool rules (tool_life, forecast): rule id -> signal id."""
    out: dict[str, dict[str, str]] = {m: {} for m in machines}
    for r in rules:
        if r.kind in TOOL_KINDS and r.machine in out and r.signal is not None:
            out[r.machine][r.id] = r.signal
    return out


def changed(t: Transition) -> Changed:
    """A transition as the fold sees it: with the fault code it is about (a code rule's code, an OPC UA
    condition), if any."""
    code: int | str | None = None
    text = ""
    if t.kind is not TransitionKind.CLEARED:
        if t.part is not None:
            code, text = t.part, t.message
        elif t.extra.get("kind") == "code" and isinstance(t.extra.get("code"), int):
            code, text = t.extra["code"], str(t.extra.get("code_text", ""))
    return Changed(t.time, t.key, t.kind, code, text)


class UsageLog:
    """The machines' fold states. Caller guarantees: calls are not concurrent, and :meth:`apply` is
    called with a step only once the transaction that wrote it (``step.write``) has committed."""

    def __init__(self, cfg: UsageSection, machines: Mapping[str, ToolRules]) -> None:
        self.params = Params(every=cfg.summary_every, keep=cfg.keep)
        self.send = cfg.send
        self.states: dict[str, MachineUsage] = {}
        self._machines = {m: dict(rules) for m, rules in machines.items()}  # configured, with their tool rules
        self._watched: set[str] = set()  # the machines watched (once a step that says so committed)

    def load(self, rows: Iterable[tuple[str, str]]) -> None:
        """The stored states: ``(machine, state JSON)`` rows of ``usage_state``."""
        self.states = {machine: from_json(json.loads(doc)) for machine, doc in rows}

    def next_due(self, now: float) -> float:
        """When the clock should next say :meth:`seen`: the next heartbeat or period end."""
        return min(now + HEARTBEAT, period_start(now, self.params.every) + self.params.every)

    def observe(self, transitions: Sequence[Transition], tools: Sequence[tuple[str, ToolChanged]]) -> UsageStep:
        """Transitions and ``(machine, tool change)`` pairs of one commit, for the machines watched."""
        per: dict[str, list[Observation]] = {}
        for machine, change in tools:
            per.setdefault(machine, []).append(change)
        for t in transitions:
            per.setdefault(t.machine, []).append(changed(t))
        return self._step({m: obs for m, obs in per.items() if m in self._watched})

    def configure(self, machines: Mapping[str, ToolRules]) -> None:
        """The machines the config has now, with their tool rules (at start and after a reload); the
        next :meth:`seen` starts watching the new ones and stops watching those no longer there."""
        self._machines = {m: dict(rules) for m, rules in machines.items()}

    def seen(self, now: float, active: Iterable[str] = (), *, prune: bool = False) -> UsageStep:
        """The clock: every watched machine was watched up to ``now`` (this closes the periods that
        ended). A configured machine not watched yet starts (the time since its last observation was
        not watched; ``active``: the alert keys active now, as the alert log has them); a machine no
        longer configured is no longer watched. ``prune``: the history older than ``keep`` goes too."""
        keys = list(active)
        per: dict[str, list[Observation]] = {}
        for machine, rules in self._machines.items():
            if machine in self._watched:
                per[machine] = [Seen(now, frozenset(rules))]
            else:
                mine = frozenset(k for k in keys if k.startswith(f"{machine}/"))
                per[machine] = [Watch(now, mine, frozenset(rules))]
        for machine in self._watched - set(self._machines):
            per[machine] = [Seen(now)]
        step = self._step(per)
        step.watched = frozenset(self._machines)
        if prune:
            step.prune_before = now - self.params.keep
        return step

    def _step(self, per: Mapping[str, Sequence[Observation]]) -> UsageStep:
        out = UsageStep()
        for machine, observations in per.items():
            state = self.states.get(machine)
            first = observations[0]
            if state is None:
                if not isinstance(first, Watch):
                    continue  # never: seen() starts every machine with a Watch
                state, observations = start(machine, self.params, first), observations[1:]
            state, outputs = fold(self.params, state, observations)
            out.states[machine] = state
            out.records += [self._record(o) for o in outputs]
        if any(r.type == USAGE_SUMMARY for r in out.records):
            out.prune_before = max(s.clock for s in out.states.values()) - self.params.keep
        out.send = self.send
        return out

    def _record(self, o: Output) -> Record:
        if isinstance(o, Summary):
            return Record(USAGE_SUMMARY, o.machine, summary_data(o), o.end, o.start)
        signal = self._machines.get(o.machine, {}).get(o.rule)
        return Record(TOOL_CHANGED, f"{o.machine}/{o.rule}", tool_event_data(o, signal), o.time)

    def apply(self, step: UsageStep) -> None:
        """The step's transaction committed: its states are the ones now."""
        self.states.update(step.states)
        if step.watched is not None:
            self._watched = set(step.watched)


Commit = Callable[[Callable[["UsageLog"], UsageStep]], Awaitable[object]]  # AlertLog.commit_usage


async def run_clock(
    usage: UsageLog, commit: Commit, wall: Callable[[], float], active: Callable[[], Iterable[str]]
) -> None:
    """Tell the fold the time until cancelled: every :data:`HEARTBEAT` and just after each period's
    end (which commits its summaries). A refused commit is tried again at the next due time (the
    clock marks lost meanwhile are only not-watched time after a crash)."""
    trouble = Trouble(log, "usage: committing the clock")
    while True:
        now = wall()
        await asyncio.sleep(max(0.0, usage.next_due(now) - now) + 0.001)
        try:
            await commit(lambda u: u.seen(wall(), active()))
        except OutboxError as exc:
            trouble.fail(exc, "tried again at the next heartbeat")
        else:
            trouble.ok()
