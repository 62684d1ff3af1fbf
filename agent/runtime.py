"""The runtime: wires drivers, rules, the alert log, the outbox and the sinks in one TaskGroup.

::

    MachineRunner (one per machine)          AlertLog            AsyncOutbox          Delivery (one per sink)
      poll:  driver.read() -> rules.evaluate -> commit(events) --> SQLite (WAL) <------ pending / settle -> sink
      watch: no good read for offline_after -> "<machine>/offline"

Every machine runs in its own task and reconnects on its own, so one dead machine never delays
another. A stop signal cancels the machines, makes one last delivery attempt and closes the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential_jitter

from agent.alerts import AlertLog, Observer, rfc3339
from agent.config import Config, ModbusMachine, OpcuaMachine, Rule
from agent.delivery import Delivery
from agent.errors import AndonError, ConnectionLost, OutboxError
from agent.logs import Trouble
from agent.model import Sample, Severity, Transition, TransitionKind
from agent.outbox import AsyncOutbox, Outbox
from agent.rules import RuleState, evaluate
from agent.sinks.http import HttpSink, make_client, read_token
from drivers.base import Driver, Drivers, PushDriver

log = logging.getLogger("andon.runtime")

OFFLINE = "offline"
FLUSH_TIMEOUT = 5.0


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


Machine = ModbusMachine | OpcuaMachine


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

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._supervise(), name=f"poll:{self.machine.id}")
            tg.create_task(self._watch(), name=f"offline:{self.machine.id}")

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
        """One connection's life. Returns (for an immediate, fresh reconnect) if it had worked."""
        async with self._driver_factory(self.machine) as driver:
            self.status.connected = True
            had_good = False
            source = driver.updates() if isinstance(driver, PushDriver) else self._polls(driver)
            try:
                async for samples in source:
                    honour_swallowed_cancel()
                    had_good = await self.handle(samples) or had_good
            except ConnectionLost as exc:
                if not had_good:
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
            yield await driver.read()
            now = self._clock.monotonic()
            next_tick = max(next_tick + interval, now)
            await asyncio.sleep(next_tick - now)

    # -- samples and rules --------------------------------------------------------------------

    async def handle(self, samples: Sequence[Sample]) -> bool:
        """Evaluate the rules on one poll's samples and commit the transitions. True if any was good."""
        now = self._clock.monotonic()
        self.status.reads += 1
        good = [s for s in samples if s.good]
        self.status.bad_signals = {s.signal: s.error or "bad" for s in samples if not s.good}
        if good:
            self._conn.ok("reading again")
            self.status.last_good = good[0].time
            self._last_good_mono = now
            self._recovered.set()
            if self.status.offline:
                await self._set_offline(False)
        new_states = dict(self.states)
        transitions: list[Transition] = []
        for sample in good:
            for rule in self._by_signal.get(sample.signal, ()):
                new_states[rule.id], ts = evaluate(rule, new_states[rule.id], sample, now, self._units[sample.signal])
                transitions += ts
        if transitions:
            try:
                await self._alerts.commit(transitions)
            except OutboxError as exc:  # keep the old states: the same transitions come again next poll
                self._commit.fail(exc, "alerts are held back until the outbox accepts them")
                return bool(good)
            self._commit.ok()
        self.states = new_states
        return bool(good)

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
    """The whole daemon for one config. ``run(stop)`` returns after ``stop`` is set and all is flushed."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
        driver_factory: Callable[[Machine], Driver] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self._observers = list(observers)
        self._driver_factory = driver_factory
        self.machines: list[MachineRunner] = []
        self.deliveries: list[Delivery] = []
        self.outbox: AsyncOutbox | None = None
        self.alerts: AlertLog | None = None
        self.started = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        tokens = [read_token(s, i) for i, s in enumerate(cfg.sinks)]  # ConfigError before anything starts
        cfg.agent.state_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            drivers = self._driver_factory
            if drivers is None:
                shared = Drivers()
                stack.push_async_callback(shared.aclose)
                drivers = shared
            outbox = await stack.enter_async_context(
                AsyncOutbox(Outbox(cfg.agent.state_dir / "outbox.db", max_events=cfg.outbox.max_events))
            )
            self.outbox = outbox
            await outbox.call(outbox.sync.set_sinks, [s.id for s in cfg.sinks])
            for sink_cfg, token in zip(cfg.sinks, tokens, strict=True):
                client = await stack.enter_async_context(make_client(sink_cfg))
                sink = HttpSink(sink_cfg, client, token)
                self.deliveries.append(
                    Delivery(sink, outbox, batch_size=cfg.outbox.batch_size, retry_max=sink_cfg.retry_max)
                )
            self.alerts = AlertLog(
                outbox,
                gateway=cfg.agent.gateway_id,
                site=cfg.agent.site,
                on_commit=[d.wake for d in self.deliveries],
                observers=self._observers,
            )
            await self.alerts.load()
            await self._clear_orphans(self.alerts)
            self.machines = [
                MachineRunner(
                    m,
                    [r for r in cfg.rules if r.machine == m.id],
                    self.alerts,
                    clock=self.clock,
                    driver_factory=drivers,
                )
                for m in cfg.machines
            ]
            log.info(
                "agent %s started: %d machine(s), %d rule(s), %d sink(s), %d event(s) waiting in the outbox",
                cfg.agent.gateway_id,
                len(cfg.machines),
                len(cfg.rules),
                len(cfg.sinks),
                outbox.sync.depth(),
            )
            async with asyncio.TaskGroup() as tg:
                polls = [tg.create_task(m.run(), name=f"machine:{m.machine.id}") for m in self.machines]
                sends = [tg.create_task(d.run(), name=f"sink:{d.sink.id}") for d in self.deliveries]
                self.started.set()
                await stop.wait()
                log.info("stopping: last delivery attempt, then closing")
                for task in polls:
                    task.cancel()
                for d in self.deliveries:
                    d.stop()  # finish the batch in flight, so a clean stop sends nothing twice
                if sends:
                    _, late = await asyncio.wait(sends, timeout=FLUSH_TIMEOUT)
                    for task in late:
                        task.cancel()
            for d in self.deliveries:
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT):
                        await d.flush()
                except (TimeoutError, OutboxError) as exc:
                    log.warning(
                        "sink %s: final delivery cut short (%s); the rest waits in the outbox",
                        d.sink.id,
                        exc or "timeout",
                    )
        log.info("stopped")

    async def _clear_orphans(self, alerts: AlertLog) -> None:
        """Clear active alerts whose machine or rule is no longer in the config."""
        known = {f"{r.machine}/{r.id}" for r in self.cfg.rules} | {f"{m.id}/{OFFLINE}" for m in self.cfg.machines}
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
                    message=f"{a.key} cleared: its rule is no longer in the configuration",
                    time=self.clock.wall(),
                )
                for a in orphans
            ]
        )
