"""One machine's life in the agent: :class:`MachineRunner` polls it (or takes what it pushes),
judges its samples with the rules, commits the transitions and watches for it going offline.

::

    poll:  driver.read() / driver.updates() -> rules.evaluate -> flood gate -> AlertLog.commit
    alarms: driver.conditions() (OPC UA A&C) -> rules.alarms.on_events -> flood gate -> AlertLog.commit
    watch: no good read for offline_after -> "<machine>/offline" (cleared by the next good read)
    blind: a watched signal unreadable for offline_after -> "<machine>/unreadable" (agent.rules.unreadable)
    tick:  every poll_interval, the last good values again -> rules.tick (delays, repeats, staleness)

Every machine runs in its own tasks and reconnects on its own (capped, jittered backoff), so one
dead machine never delays another. The :class:`~agent.pipeline.supervisor.Agent` starts and stops
runners; :class:`Clock` is passed in so tests can drive time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential_jitter

from agent.config.base import MachineBase
from agent.config.rules import AlarmsRule, ForecastRule, Rule, SignalRule, StaleRule
from agent.config.sections import AlertsSection
from agent.errors import AndonError, ConnectionLost, OutboxError
from agent.model import ConditionEvent, Quality, Sample, Severity, Transition, TransitionKind
from agent.ops.logs import Trouble
from agent.pipeline.alertlog import AlertLog, rfc3339
from agent.pipeline.usage import ToolChanged
from agent.rules import RuleState, evaluate, tick, tool_change
from agent.rules.alarms import AlarmsState, alarms_tick, on_events, restore
from agent.rules.flood import FLOOD, FloodState, admit, flood_tick, forgotten
from agent.rules.saved import restored_state, saved_state
from agent.rules.unreadable import UNREADABLE, BlindState, judge, observe
from drivers.base import AlarmDriver, Driver, PushDriver

log = logging.getLogger("andon.runtime")

OFFLINE = "offline"
STABLE_SESSION = 10.0  # seconds a connection must have worked before a loss reconnects at once
SAVE_EVERY = 60.0  # seconds between saves of active forecasts' windows (one small synced write each)
_GOOD = Quality.GOOD


@dataclass(frozen=True)
class Clock:
    """Wall clock for event times, monotonic clock for intervals. Tests pass their own."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


@dataclass
class MachineStatus:
    connected: bool = False
    offline: bool = False
    last_good: float | None = None  # wall clock of the last good read
    reads: int = 0
    errors: int = 0
    last_error: str | None = None
    bad_signals: dict[str, str] = field(default_factory=dict)
    poll_seconds_sum: float = 0.0
    poll_count: int = 0


Machine = MachineBase


def honour_swallowed_cancel() -> None:
    """Re-raise a cancellation that a library's ``asyncio.wait_for`` swallowed.

    On Python 3.11, ``asyncio.wait_for`` (pymodbus awaits every response with it) drops a
    cancellation that arrives in the same loop step as the response (CPython gh-86296, fixed in
    3.12). The task still counts the request, so a poll loop that checks it cannot run on forever
    after a stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class MachineRunner:
    """Polls one machine, evaluates its rules and watches for it going offline."""

    def __init__(
        self,
        machine: Machine,
        rules: Sequence[Rule],
        alerts: AlertLog,
        *,
        clock: Clock,
        driver_factory: Callable[[Machine], Driver],
        flood: AlertsSection | None = None,
    ) -> None:
        self.machine = machine
        self.rules = list(rules)
        self._alerts = alerts
        self._clock = clock
        self._driver_factory = driver_factory
        self._units = {s.id: s.unit for s in machine.signals}
        self.alarm_rules = [r for r in self.rules if isinstance(r, AlarmsRule)]
        signal_rules = [r for r in self.rules if not isinstance(r, AlarmsRule)]
        self._by_signal: dict[str, list[SignalRule]] = {}
        for r in signal_rules:
            self._by_signal.setdefault(r.signal, []).append(r)
            if isinstance(r, StaleRule) and r.only_while is not None and r.only_while != r.signal:
                self._by_signal.setdefault(r.only_while, []).append(r)
        self._watched = {signal: [r.id for r in rules] for signal, rules in self._by_signal.items()}
        blind = alerts.active.get(f"{machine.id}/{UNREADABLE}")
        self._blind = BlindState(sent=blind.message if blind else None)  # what upstream has, after a restart
        self._flood_cfg = flood or AlertsSection()
        self._flood = FloodState()
        self._rules_lock = asyncio.Lock()  # the poll and the rule tick take turns with states and commits
        self._last: dict[str, Sample] = {}  # the last good sample per signal, judged again on each tick
        self._fresh: set[str] = set()  # signals a poll evaluated since the last tick
        self.states: dict[str, RuleState] = {}
        self._by_id = {r.id: r for r in self.rules}
        to_mono = clock.monotonic() - clock.wall()
        for r in signal_rules:
            a = alerts.active.get(f"{machine.id}/{r.id}")
            self.states[r.id] = restored_state(r, a.severity, a.threshold, a.rule_state, to_mono) if a else RuleState()
        self._saved_at = clock.monotonic()  # when the forecasts' windows were last saved with their alerts
        active = {key: a.severity for key, a in alerts.active.items()}
        self.alarm_states: dict[str, AlarmsState] = {r.id: restore(r, active) for r in self.alarm_rules}
        self._had_good = False  # the current session gave a good read
        self.status = MachineStatus(offline=f"{machine.id}/{OFFLINE}" in alerts.active)
        self._last_good_mono = clock.monotonic()  # the offline clock starts when the agent starts
        self._recovered = asyncio.Event()
        self.first_poll = asyncio.Event()  # set when the first poll is done, or the first connection failed
        self._offline_lock = asyncio.Lock()
        self._conn = Trouble(log, f"machine {machine.id}")
        self._commit = Trouble(log, f"machine {machine.id}: committing events")

    @property
    def last_good_monotonic(self) -> float:
        """Monotonic time of the last good read (the agent's start time before the first one)."""
        return self._last_good_mono

    @property
    def outbox_error(self) -> str | None:
        """Why the last commit of this machine's events failed, while it keeps failing."""
        return self._commit.last_error

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._supervise(), name=f"poll:{self.machine.id}")
            tg.create_task(self._watch(), name=f"offline:{self.machine.id}")
            tg.create_task(self._tick_rules(), name=f"rules:{self.machine.id}")

    # -- connection supervision ---------------------------------------------------------------

    async def _supervise(self) -> None:
        """Connect and poll forever; reconnect with capped, jittered backoff after any failure."""
        cap = self.machine.reconnect_max
        while True:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential_jitter(multiplier=0.25, max=cap, jitter=min(1.0, cap / 4)),
                stop=stop_never,
                before_sleep=self._before_sleep,
            ):
                with attempt:
                    await self._session()

    def _before_sleep(self, state: RetryCallState) -> None:
        self.first_poll.set()
        exc = state.outcome.exception() if state.outcome else None
        self.status.connected = False
        self.status.errors += 1
        self.status.last_error = str(exc)
        if isinstance(exc, AndonError):
            self._conn.fail(exc, "reconnecting with backoff")
        else:  # a bug: keep the machine alive, but show the traceback once
            log.exception("machine %s: unexpected error; restarting its poll loop", self.machine.id, exc_info=exc)

    async def _session(self) -> None:
        """One connection's life. Returns (for an immediate, fresh reconnect) if it had worked for a while.

        A connection that breaks soon after it gave good reads raises instead, so the backoff keeps
        growing: a device that accepts, answers once and drops never gets a tight reconnect loop.
        """
        async with self._driver_factory(self.machine) as driver:
            self.status.connected = True
            self._had_good = False
            opened = self._clock.monotonic()
            source = driver.updates() if isinstance(driver, PushDriver) else self._polls(driver)
            try:
                if self.alarm_rules and isinstance(driver, AlarmDriver):
                    await _together(self._samples(source), self._alarms(driver))
                else:
                    await self._samples(source)
            except ConnectionLost as exc:
                if not self._had_good or self._clock.monotonic() - opened < STABLE_SESSION:
                    raise
                self.status.connected = False
                self.status.last_error = str(exc)
                self._conn.fail(exc, "reconnecting")

    async def _samples(self, source: AsyncIterator[list[Sample]]) -> None:
        async for samples in source:
            honour_swallowed_cancel()
            if await self.handle(samples):
                self._had_good = True

    async def _alarms(self, driver: AlarmDriver) -> None:
        """The machine's own alarms, for the ``alarms`` rules, from their notifiers (``source``)."""
        async for events in driver.conditions([r.source for r in self.alarm_rules]):
            await self.handle_conditions(events)

    async def _polls(self, driver: Driver) -> AsyncIterator[list[Sample]]:
        """Read the driver every ``poll_interval`` (missed ticks are skipped, never bunched up)."""
        interval = self.machine.poll_interval
        next_tick = self._clock.monotonic()
        while True:
            honour_swallowed_cancel()
            started = self._clock.monotonic()
            samples = await driver.read()
            now = self._clock.monotonic()
            self.status.poll_seconds_sum += now - started
            self.status.poll_count += 1
            yield samples
            next_tick = max(next_tick + interval, now)
            await asyncio.sleep(next_tick - now)

    # -- samples and rules --------------------------------------------------------------------

    async def handle(self, samples: Sequence[Sample]) -> bool:
        """Evaluate the rules on one poll's samples and commit the transitions. True if any was good."""
        now = self._clock.monotonic()
        self.status.reads += 1
        good = [s for s in samples if s.quality is _GOOD]  # not .good: a thousand property calls cost
        bad: dict[str, str] = {}
        if len(good) < len(samples):
            bad = {s.signal: s.error or "bad" for s in samples if s.quality is not _GOOD}
        self.status.bad_signals = bad
        if bad or self._blind.since:
            self._blind = observe(self._blind, samples, self._watched, now)
        if good:
            self._conn.ok("reading again")
            self.status.last_good = good[0].time
            self._last_good_mono = now
            self._recovered.set()
            if self.status.offline:
                await self._set_offline(False)
        async with self._rules_lock:
            await self._evaluate(good, now, ticked=False)
            await self._judge_unreadable(now)
        self.first_poll.set()
        return bool(good)

    async def handle_conditions(self, events: Sequence[ConditionEvent]) -> None:
        """Apply the machine's condition events to its ``alarms`` rules and commit the transitions."""
        now = self._clock.monotonic()
        async with self._rules_lock:
            new = dict(self.alarm_states)
            transitions: list[Transition] = []
            for rule in self.alarm_rules:
                new[rule.id], ts = on_events(rule, new[rule.id], events, now)
                transitions += ts
            if await self._admit(transitions, now, ticked=False, states=self.states):
                self.alarm_states = new

    async def _evaluate(self, samples: Sequence[Sample], now: float, *, ticked: bool, alarms: bool = False) -> None:
        """Judge good samples (fresh ones, or on a tick the last ones again; with ``alarms`` the
        alarm rules' conditions too); commit what the flood gate passes."""
        new_states = dict(self.states)
        transitions, tools = self._judge(samples, now, ticked, new_states)
        new_alarms = self.alarm_states
        if alarms and self.alarm_rules:
            new_alarms = dict(new_alarms)
            for rule in self.alarm_rules:
                new_alarms[rule.id], ts = alarms_tick(rule, new_alarms[rule.id], now, self._clock.wall())
                transitions += ts
        if await self._admit(transitions, now, ticked=ticked, states=new_states, tools=tools):
            self.states = new_states
            self.alarm_states = new_alarms
            if now - self._saved_at >= SAVE_EVERY:
                await self._save_windows(now)

    def _judge(
        self, samples: Sequence[Sample], now: float, ticked: bool, new_states: dict[str, RuleState]
    ) -> tuple[list[Transition], list[tuple[str, ToolChanged]]]:
        """The signal rules' transitions for these samples, and the tool changes they saw (for the usage
        fold); their new states go into ``new_states``."""
        transitions: list[Transition] = []
        tools: list[tuple[str, ToolChanged]] = []  # tool changes the rules saw (for the usage fold)
        by_signal, fresh = self._by_signal, self._fresh
        for sample in samples:
            rules = by_signal.get(sample.signal)
            if not rules:  # most signals of a big machine have no rule: nothing to judge or remember
                continue
            self._last[sample.signal] = sample
            if not ticked:
                fresh.add(sample.signal)
            for rule in rules:
                unit = self._units.get(rule.signal, "")
                before = new_states[rule.id]
                if ticked:
                    new_states[rule.id], ts = tick(rule, before, sample, now, self._clock.wall(), unit)
                else:
                    new_states[rule.id], ts = evaluate(rule, before, sample, now, unit)
                transitions += ts
                memo = new_states[rule.id].memo
                if memo is not before.memo and (change := tool_change(before.memo, memo)) is not None:
                    tool = rule.name or rule.signal
                    tools.append((self.machine.id, ToolChanged(change.time, rule.id, tool, change.used, change.limit)))
        return transitions, tools

    async def _admit(
        self,
        transitions: list[Transition],
        now: float,
        *,
        ticked: bool,
        states: Mapping[str, RuleState],
        tools: Sequence[tuple[str, ToolChanged]] = (),
    ) -> bool:
        """Pass transitions through the flood gate (on a tick, let its clock run) and commit what it lets
        through, with the tool changes the rules saw (for the usage fold). False when the outbox
        refused: the caller keeps its old states, so they come again."""
        flood, out = admit(self._flood_cfg, self.machine.id, self._flood, transitions, now)
        if ticked:
            upstream = {key: a.severity for key, a in self._alerts.active.items()}
            flood, more = flood_tick(self._flood_cfg, self.machine.id, flood, now, self._clock.wall(), upstream)
            out += more
        if out or tools:
            try:
                await self._alerts.commit(out, self._saved(states, out), tools)
            except OutboxError as exc:  # keep the old states: the same transitions come again
                self._commit.fail(exc, "alerts are held back until the outbox accepts them")
                return False
            self._commit.ok()
        self._flood = flood
        return True

    def _saved(self, states: Mapping[str, RuleState], out: Sequence[Transition]) -> dict[str, dict[str, Any]]:
        """What each raised or updated alert of a signal rule keeps for a restart (agent.rules.saved)."""
        to_wall = self._clock.wall() - self._clock.monotonic()
        return {
            t.key: saved_state(states[t.rule], to_wall)
            for t in out
            if t.kind is not TransitionKind.CLEARED and t.part is None and t.rule in states
        }

    async def _save_windows(self, now: float) -> None:
        """Keep the windows of active forecasts with their alerts (at most once per :data:`SAVE_EVERY`),
        so that after a restart the trend goes on instead of clearing for want of history."""
        self._saved_at = now
        to_wall = self._clock.wall() - now
        windows = {
            f"{self.machine.id}/{rule_id}": saved_state(state, to_wall)
            for rule_id, state in self.states.items()
            if state.active is not None and isinstance(self._by_id[rule_id], ForecastRule)
        }
        if windows:
            with contextlib.suppress(OutboxError):  # the full disk is reported by the commits; next time
                await self._alerts.save_rule_states(windows)

    async def _tick_rules(self) -> None:
        """Every poll_interval, judge again the last good value of each signal no poll brought since.

        Off-delays, repeats, staleness and forecasts depend on time passing, and a subscription
        delivers a value only when it changes. Not while the machine is offline or a signal reads
        bad (its value is then unknown); the flood gate's clock runs always.
        """
        key = f"{self.machine.id}/{FLOOD}"
        if key in self._alerts.active:  # a flood from before a restart or reload: its tracking starts afresh
            with contextlib.suppress(OutboxError):
                await self._alerts.commit(
                    [forgotten(self.machine.id, self._alerts.active[key].severity, self._clock.wall())]
                )
        failing = False
        while True:
            await asyncio.sleep(self.machine.poll_interval)
            try:
                async with self._rules_lock:
                    skip = self._fresh | set(self.status.bad_signals)
                    due = [s for sig, s in self._last.items() if sig not in skip]
                    live = self.status.connected and not self.status.offline
                    if not live:
                        due = []
                    self._fresh.clear()
                    await self._evaluate(due, self._clock.monotonic(), ticked=True, alarms=live)
                    await self._judge_unreadable(self._clock.monotonic())
            except Exception:  # a bug must not stop the machine's polling: show it once, keep ticking
                if not failing:
                    log.exception("machine %s: evaluating the rules on the clock tick failed", self.machine.id)
                failing = True
            else:
                if failing:
                    log.info("machine %s: the rule tick works again", self.machine.id)
                failing = False

    async def _judge_unreadable(self, now: float) -> None:
        """Raise, update or clear ``<machine>/unreadable`` (only while the machine is online: offline,
        its own alert says why nothing can be read). A failed commit is tried again next time."""
        if self.status.offline or not self.status.connected or (not self._blind.since and self._blind.sent is None):
            return
        m = self.machine
        state, out = judge(
            self._blind,
            machine=m.id,
            watched=self._watched,
            now=now,
            wall=self._clock.wall(),
            after=m.offline_after,
            severity=Severity.parse(m.offline_severity),
        )
        if out:
            try:
                await self._alerts.commit(out)
            except OutboxError as exc:
                self._commit.fail(exc, "the unreadable-signals alert is held back until the outbox accepts it")
                return
            self._commit.ok()
        self._blind = state

    # -- offline ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Raise ``<machine>/offline`` when no good read came for ``offline_after``.

        A raise the outbox refused (a full disk) is tried again every ``poll_interval``, like a
        rule's transition, until it is committed or the machine answers again.
        """
        limit = self.machine.offline_after
        while True:
            remaining = self._last_good_mono + limit - self._clock.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            if not self.status.offline:
                await self._set_offline(True)
            self._recovered.clear()
            if self.status.offline:
                await self._recovered.wait()
            else:  # not committed: again after a poll interval, unless a good read comes first
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._recovered.wait(), self.machine.poll_interval)

    async def _set_offline(self, offline: bool) -> None:
        async with self._offline_lock:
            if self.status.offline == offline:
                return
            m = self.machine
            if offline:
                since = f" since {rfc3339(self.status.last_good)}" if self.status.last_good else ""
                why = f" ({self.status.last_error})" if self.status.last_error else ""
                message = (
                    f"{m.id} is not answering{since}{why}: check its power, cable and network; "
                    "the agent keeps reconnecting"
                )
            else:
                message = f"{m.id} is answering again"
            t = Transition(
                machine=m.id,
                rule=OFFLINE,
                signal=None,
                kind=TransitionKind.RAISED if offline else TransitionKind.CLEARED,
                severity=Severity.parse(m.offline_severity),
                value=None,
                threshold=m.offline_after,
                message=message,
                time=self._clock.wall(),
                extra={"kind": OFFLINE},
            )
            try:
                await self._alerts.commit([t])
            except OutboxError as exc:
                self._commit.fail(exc, "the offline alert is held back until the outbox accepts it")
                return
            self.status.offline = offline


async def _together(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run the jobs at once until the first one ends; its exception (if any) is raised as it is,
    and the others are cancelled."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
