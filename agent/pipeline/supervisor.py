"""The runtime: wires drivers, rules, the alert log, the outbox and the sinks in one TaskGroup.

::

    MachineRunner (one per machine)          AlertLog            AsyncOutbox          Delivery (one per sink)
      poll:  driver.read() -> rules.evaluate -> commit(events) --> SQLite (WAL) <------ pending / settle -> sink
      watch: no good read for offline_after -> "<machine>/offline"
      tick:  every poll_interval, last values again -> rules.tick; flood gate (agent.rules.flood) -> commit

Every machine runs in its own task and reconnects on its own, so one dead machine never delays
another. A stop signal cancels the machines, makes one last delivery attempt and closes the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential_jitter

from agent.config.base import MachineBase
from agent.config.load import load_config
from agent.config.rules import Rule, StaleRule
from agent.config.schema import Config
from agent.config.sections import AlertsSection
from agent.errors import AndonError, ConfigError, ConnectionLost, OutboxError
from agent.model import Quality, Sample, Severity, Transition, TransitionKind
from agent.ops.logs import Trouble
from agent.ops.notify import Notifier
from agent.pipeline.alertlog import AlertLog, Observer, rfc3339
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.rules import RuleState, evaluate, tick
from agent.rules.flood import FLOOD, FloodState, admit, flood_tick, forgotten
from agent.sinks.base import Secrets, SinkConfigBase
from agent.sinks.registry import sink_plugin
from drivers.base import Driver, PushDriver
from drivers.registry import Drivers

log = logging.getLogger("andon.runtime")

OFFLINE = "offline"
FLUSH_TIMEOUT = 5.0
STABLE_SESSION = 10.0  # seconds a connection must have worked before a loss reconnects at once
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
        self._by_signal: dict[str, list[Rule]] = {}
        for r in self.rules:
            self._by_signal.setdefault(r.signal, []).append(r)
            if isinstance(r, StaleRule) and r.only_while is not None and r.only_while != r.signal:
                self._by_signal.setdefault(r.only_while, []).append(r)
        self._flood_cfg = flood or AlertsSection()
        self._flood = FloodState()
        self._rules_lock = asyncio.Lock()  # the poll and the rule tick take turns with states and commits
        self._last: dict[str, Sample] = {}  # the last good sample per signal, judged again on each tick
        self._fresh: set[str] = set()  # signals a poll evaluated since the last tick
        self.states: dict[str, RuleState] = {}
        for r in self.rules:
            a = alerts.active.get(f"{machine.id}/{r.id}")
            self.states[r.id] = RuleState(active=a.severity, threshold=a.threshold) if a else RuleState()
        self.status = MachineStatus(offline=f"{machine.id}/{OFFLINE}" in alerts.active)
        self._last_good_mono = clock.monotonic()  # the offline clock starts when the agent starts
        self._recovered = asyncio.Event()
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
            had_good = False
            opened = self._clock.monotonic()
            source = driver.updates() if isinstance(driver, PushDriver) else self._polls(driver)
            try:
                async for samples in source:
                    honour_swallowed_cancel()
                    had_good = await self.handle(samples) or had_good
            except ConnectionLost as exc:
                if not had_good or self._clock.monotonic() - opened < STABLE_SESSION:
                    raise
                self.status.connected = False
                self.status.last_error = str(exc)
                self._conn.fail(exc, "reconnecting")

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
        if good:
            self._conn.ok("reading again")
            self.status.last_good = good[0].time
            self._last_good_mono = now
            self._recovered.set()
            if self.status.offline:
                await self._set_offline(False)
        async with self._rules_lock:
            await self._evaluate(good, now, ticked=False)
        return bool(good)

    async def _evaluate(self, samples: Sequence[Sample], now: float, *, ticked: bool) -> None:
        """Judge good samples (fresh ones, or on a tick the last ones again); commit what the flood gate passes."""
        new_states = dict(self.states)
        transitions: list[Transition] = []
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
                if ticked:
                    new_states[rule.id], ts = tick(rule, new_states[rule.id], sample, now, self._clock.wall(), unit)
                else:
                    new_states[rule.id], ts = evaluate(rule, new_states[rule.id], sample, now, unit)
                transitions += ts
        flood, out = admit(self._flood_cfg, self.machine.id, self._flood, transitions, now)
        if ticked:
            upstream = {key: a.severity for key, a in self._alerts.active.items()}
            flood, more = flood_tick(self._flood_cfg, self.machine.id, flood, now, self._clock.wall(), upstream)
            out += more
        if out:
            try:
                await self._alerts.commit(out)
            except OutboxError as exc:  # keep the old states: the same transitions come again
                self._commit.fail(exc, "alerts are held back until the outbox accepts them")
                return
            self._commit.ok()
        self.states = new_states
        self._flood = flood

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
                    if self.status.offline or not self.status.connected:
                        due = []
                    self._fresh.clear()
                    await self._evaluate(due, self._clock.monotonic(), ticked=True)
            except Exception:  # a bug must not stop the machine's polling: show it once, keep ticking
                if not failing:
                    log.exception("machine %s: evaluating the rules on the clock tick failed", self.machine.id)
                failing = True
            else:
                if failing:
                    log.info("machine %s: the rule tick works again", self.machine.id)
                failing = False

    # -- offline ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Raise ``<machine>/offline`` when no good read came for ``offline_after``."""
        limit = self.machine.offline_after
        while True:
            remaining = self._last_good_mono + limit - self._clock.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            if not self.status.offline:
                await self._set_offline(True)
            self._recovered.clear()
            await self._recovered.wait()

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
            )
            try:
                await self._alerts.commit([t])
            except OutboxError as exc:
                self._commit.fail(exc, "the offline alert is held back until the outbox accepts it")
                return
            self.status.offline = offline


class Agent:
    """The whole daemon for one config. ``run(stop)`` returns after ``stop`` is set and all is flushed.

    Machines and sinks run as tasks of one TaskGroup; :meth:`request_reload` (SIGHUP) re-reads the
    config file and starts, stops or restarts only the machines and sinks whose config changed.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Path | None = None,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
        driver_factory: Callable[[Machine], Driver] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.started_at = self.clock.monotonic()
        self._config_path = config_path
        self._observers = list(observers)
        self._driver_factory = driver_factory
        self._notifier = notifier or Notifier(None)
        self._machines: dict[str, tuple[MachineRunner, asyncio.Task[None]]] = {}
        self._sinks: dict[str, _RunningSink] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._reload = asyncio.Event()
        self.outbox: AsyncOutbox | None = None
        self.alerts: AlertLog | None = None
        self.status_port: int | None = None
        self.started = asyncio.Event()
        self.reloads = 0  # reloads applied (a refused one does not count)
        self.reload_done = asyncio.Event()  # set after each reload attempt, applied or refused

    @property
    def machines(self) -> list[MachineRunner]:
        return [runner for runner, _ in self._machines.values()]

    @property
    def deliveries(self) -> list[Delivery]:
        return [s.delivery for s in self._sinks.values()]

    def request_reload(self) -> None:
        """Re-read the config file soon (what SIGHUP does)."""
        self._reload.set()

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        secrets = _secrets(cfg)  # ConfigError before anything starts
        cfg.agent.state_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            if self._driver_factory is None:
                shared = Drivers()
                stack.push_async_callback(shared.aclose)
                self._driver_factory = shared
            self.outbox = outbox = await stack.enter_async_context(self._make_outbox(cfg))
            await outbox.call(outbox.sync.set_sinks, [s.id for s in cfg.sinks])
            self.alerts = AlertLog(
                outbox,
                gateway=cfg.agent.gateway_id,
                site=cfg.agent.site,
                on_commit=[self._wake_deliveries],
                observers=self._observers,
            )
            await self.alerts.load()
            await self._clear_orphans(self.alerts)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for sink_cfg, sink_secrets in zip(cfg.sinks, secrets, strict=True):
                    await self._start_sink(sink_cfg, sink_secrets)
                for machine in cfg.machines:
                    self._start_machine(machine)
                if cfg.status.listen:
                    await self._start_status(stack, cfg.status.listen)
                watchdog = tg.create_task(self._notifier.watchdog(), name="watchdog")
                log.info(
                    "agent %s started: %d machine(s), %d rule(s), %d sink(s), %d event(s) waiting in the outbox%s",
                    cfg.agent.gateway_id,
                    len(cfg.machines),
                    len(cfg.rules),
                    len(cfg.sinks),
                    outbox.sync.depth(),
                    f", status on {cfg.status.listen}" if cfg.status.listen else "",
                )
                self._notifier.send(READY="1", STATUS=f"watching {len(cfg.machines)} machine(s)")
                self.started.set()
                while not stop.is_set():
                    await _first(stop.wait(), self._reload.wait())
                    if self._reload.is_set() and not stop.is_set():
                        self._reload.clear()
                        await self._apply_reload()
                        self.reload_done.set()
                self._notifier.send(STOPPING="1", STATUS="stopping")
                log.info("stopping: last delivery attempt, then closing")
                for machine_id in list(self._machines):
                    await self._stop_machine(machine_id)
                await asyncio.gather(*(self._stop_sink_task(s) for s in self._sinks.values()))
                watchdog.cancel()
            for running in self._sinks.values():
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT):
                        await running.delivery.flush()
                except (TimeoutError, OutboxError) as exc:
                    log.warning(
                        "sink %s: final delivery cut short (%s); the rest waits in the outbox",
                        running.delivery.sink.id,
                        exc or "timeout",
                    )
                await running.stack.aclose()
        log.info("stopped")

    # -- building blocks ----------------------------------------------------------------------

    async def _start_status(self, stack: contextlib.AsyncExitStack, listen: str) -> None:
        """Serve /healthz, /metrics and /status; a port already taken must not stop the alerting."""
        from agent.ops.status import StatusServer  # prometheus-client only when it is used

        try:
            status = await stack.enter_async_context(StatusServer(self, listen))
        except OSError as exc:
            log.error("status endpoints are off: cannot listen on %s (%s); alerting goes on", listen, exc)
            return
        self.status_port = status.port

    def _make_outbox(self, cfg: Config) -> AsyncOutbox:
        return AsyncOutbox(
            Outbox(
                cfg.agent.state_dir / "outbox.db",
                max_events=cfg.outbox.max_events,
                max_bytes=cfg.outbox.max_bytes,
                max_dead_letters=cfg.outbox.max_dead_letters,
            )
        )

    def _wake_deliveries(self) -> None:
        for running in self._sinks.values():
            running.delivery.wake()

    async def _start_sink(self, sink_cfg: SinkConfigBase, secrets: Secrets) -> None:
        assert self._tg is not None and self.outbox is not None
        stack = contextlib.AsyncExitStack()
        sink = await stack.enter_async_context(sink_plugin(sink_cfg.kind).open(sink_cfg, secrets))
        delivery = Delivery(
            sink,
            self.outbox,
            batch_size=self.cfg.outbox.batch_size,
            retry_max=sink_cfg.retry_max,
            linger=self.cfg.outbox.linger,
            report_drops=self.alerts.report_drops if self.alerts is not None else None,
        )
        task = self._tg.create_task(delivery.run(), name=f"sink:{sink_cfg.id}")
        self._sinks[sink_cfg.id] = _RunningSink(sink_cfg, secrets, delivery, stack, task)

    async def _stop_sink_task(self, running: _RunningSink) -> None:
        """Let the sink finish its batch in flight (so nothing is sent twice), then stop it."""
        running.delivery.stop()
        _, late = await asyncio.wait({running.task}, timeout=FLUSH_TIMEOUT)
        for task in late:
            task.cancel()
            await asyncio.wait({task})

    def _start_machine(self, machine: Machine) -> None:
        assert self._tg is not None and self.alerts is not None and self._driver_factory is not None
        runner = MachineRunner(
            machine,
            [r for r in self.cfg.rules if r.machine == machine.id],
            self.alerts,
            clock=self.clock,
            driver_factory=self._driver_factory,
            flood=self.cfg.alerts,
        )
        self._machines[machine.id] = (runner, self._tg.create_task(runner.run(), name=f"machine:{machine.id}"))

    async def _stop_machine(self, machine_id: str) -> None:
        _, task = self._machines.pop(machine_id)
        task.cancel()
        await asyncio.wait({task})

    # -- reload -------------------------------------------------------------------------------

    async def _apply_reload(self) -> None:
        """Apply a changed config file; an invalid one is refused and the running config stays."""
        if self._config_path is None:
            log.warning("reload requested, but the agent was not started from a config file")
            return
        try:
            new = load_config(self._config_path)
            secrets = _secrets(new)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return
        self._notifier.send(RELOADING="1", STATUS="reloading the config")
        old = self.cfg
        for section in ("agent", "outbox", "status"):
            if getattr(old, section) != getattr(new, section):
                log.warning("reload: changes to [%s] take effect after a restart", section)
        new = new.model_copy(update={"agent": old.agent, "outbox": old.outbox, "status": old.status})
        new_secrets = {s.id: secret for s, secret in zip(new.sinks, secrets, strict=True)}
        new_sinks = {s.id: s for s in new.sinks}
        for sink_id, running in list(self._sinks.items()):
            if new_sinks.get(sink_id) != running.config or new_secrets.get(sink_id) != running.secrets:
                await self._stop_sink_task(running)
                await running.stack.aclose()
                del self._sinks[sink_id]
        assert self.outbox is not None and self.alerts is not None
        await self.outbox.call(self.outbox.sync.set_sinks, list(new_sinks))

        def rules_of(cfg: Config, machine_id: str) -> list[Rule]:
            return [r for r in cfg.rules if r.machine == machine_id]

        new_machines = {m.id: m for m in new.machines}
        for machine_id, (runner, _) in list(self._machines.items()):
            kept = new_machines.get(machine_id)
            if kept != runner.machine or rules_of(new, machine_id) != rules_of(old, machine_id):
                await self._stop_machine(machine_id)  # restarted below; active alerts come back from the outbox
        self.cfg = new
        await self._clear_orphans(self.alerts)
        for sink_cfg in new.sinks:
            if sink_cfg.id not in self._sinks:
                await self._start_sink(sink_cfg, new_secrets[sink_cfg.id])
        started = [m.id for m in new.machines if m.id not in self._machines]
        for machine in new.machines:
            if machine.id in started:
                self._start_machine(machine)
        self.reloads += 1
        log.info(
            "config reloaded from %s: (re)started machine(s) %s; %d machine(s), %d rule(s), %d sink(s)",
            self._config_path,
            ", ".join(started) or "none",
            len(new.machines),
            len(new.rules),
            len(new.sinks),
        )
        self._notifier.send(READY="1", STATUS=f"watching {len(new.machines)} machine(s)")

    async def _clear_orphans(self, alerts: AlertLog) -> None:
        """Clear active alerts whose machine or rule is no longer in the config."""
        known = {f"{r.machine}/{r.id}" for r in self.cfg.rules}
        known |= {f"{m.id}/{own}" for m in self.cfg.machines for own in (OFFLINE, FLOOD)}  # the runner clears a flood
        orphans = [a for key, a in alerts.active.items() if key not in known]
        if not orphans:
            return
        await alerts.commit(
            [
                Transition(
                    machine=a.key.split("/")[0],
                    rule=a.key.split("/", 1)[1],
                    signal=None,
                    kind=TransitionKind.CLEARED,
                    severity=a.severity,
                    value=None,
                    threshold=a.threshold,
                    message=f"{a.key} cleared: its rule or machine is no longer in the configuration",
                    time=self.clock.wall(),
                )
                for a in orphans
            ]
        )


@dataclass
class _RunningSink:
    config: SinkConfigBase
    secrets: Secrets
    delivery: Delivery
    stack: contextlib.AsyncExitStack  # leaving it closes the sink
    task: asyncio.Task[None]


def _secrets(cfg: Config) -> list[Secrets]:
    """Every sink's secrets, read now: ConfigError (naming the key) if one cannot be read."""
    return [sink_plugin(s.kind).secrets(s, i) for i, s in enumerate(cfg.sinks)]


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of the coroutines finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
