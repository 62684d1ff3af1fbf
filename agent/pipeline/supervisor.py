"""The supervisor: :class:`Agent` wires drivers, rules, the alert log, the outbox and the sinks in one TaskGroup.

::

    MachineRunner (one per machine)          AlertLog            AsyncOutbox          Delivery (one per sink)
      poll:  driver.read() -> rules.evaluate -> commit(events) --> SQLite (WAL) <------ pending / settle -> sink
      watch: no good read for offline_after -> "<machine>/offline"
      tick:  every poll_interval, last values again -> rules.tick; flood gate (agent.rules.flood) -> commit

Every machine runs in its own task (:mod:`agent.pipeline.runner`) and reconnects on its own, so one
dead machine never delays another. SIGHUP reloads the config: only machines and sinks whose config
changed are restarted. A stop signal cancels the machines, makes one last delivery attempt and
closes the outbox. The status endpoints (:mod:`agent.ops.status`) render the snapshots
:meth:`Agent.snapshot` takes (:mod:`agent.pipeline.snapshot`). The agent holds its state directory's
lock (:mod:`agent.pipeline.statelock`) while it runs, and answers ``send-test`` on its control socket
(:mod:`agent.ops.control`, :mod:`agent.pipeline.sendtest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.load import load_config
from agent.config.rules import Rule
from agent.config.schema import Config
from agent.errors import ConfigError, OutboxError
from agent.ops.board.history import AlertHistory
from agent.ops.control import SOCKET, ControlServer
from agent.ops.notify import Notifier
from agent.ops.snapshot import Snapshot
from agent.pipeline.alertlog import AlertLog, EventObserver, Observer
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.pipeline.runner import OFFLINE, Clock, Machine, MachineRunner
from agent.pipeline.sendtest import send_test
from agent.pipeline.snapshot import take_snapshot
from agent.pipeline.statelock import StateLock
from agent.pipeline.surface import BoardFeed, Surface, ack_token
from agent.pipeline.upkeep import Upkeep
from agent.pipeline.usagelog import UsageLog, run_clock, tool_rules
from agent.rules.flood import FLOOD
from agent.rules.unreadable import UNREADABLE
from agent.sinks.base import Origin, Secrets, Sink, SinkConfigBase
from agent.sinks.registry import sink_plugin
from drivers.base import Driver
from drivers.registry import Drivers, require_installed

log = logging.getLogger("andon.runtime")

FLUSH_TIMEOUT = 5.0  # a reload waits this long for a sink's batch in flight before it cancels it
# A stop takes at most this long (then the outbox is closed): inside Docker's 10 s stop timeout and
# systemd's TimeoutStopSec (20 s in systemd/andon-agent.service), however many sinks hang. The first
# half waits for the sinks' batches in flight (so a clean stop sends nothing twice), the rest is the
# last delivery attempt, all sinks at once. What is not delivered by then waits in the outbox.
STOP_BUDGET = 8.0


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
        usage_observers: Sequence[EventObserver] = (),
        driver_factory: Callable[[Machine], Driver] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.started_at = self.clock.monotonic()
        self._config_path = config_path
        self._observers = list(observers)
        self._usage_observers = list(usage_observers)
        self._driver_factory = driver_factory
        self._notifier = notifier or Notifier(None)
        self._machines: dict[str, tuple[MachineRunner, asyncio.Task[None]]] = {}
        self._sinks: dict[str, _RunningSink] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._surface_tasks: list[asyncio.Task[None]] = []
        self._reload = asyncio.Event()
        self.outbox: AsyncOutbox | None = None
        self.alerts: AlertLog | None = None
        self._upkeep: Upkeep  # made once the outbox is open
        self.history = AlertHistory()  # the board's time lines
        self.surface = Surface(cfg.lights)  # the board, the status endpoints and the stack lights
        self.started = asyncio.Event()
        self.reloads = 0  # reloads applied (a refused one does not count)
        self.reload_done = asyncio.Event()  # set after each reload attempt, applied or refused

    @property
    def machines(self) -> list[MachineRunner]:
        return [runner for runner, _ in self._machines.values()]

    @property
    def deliveries(self) -> list[Delivery]:
        return [s.delivery for s in self._sinks.values()]

    @property
    def status_port(self) -> int | None:
        """The port of the board and the status endpoints, once they listen."""
        return self.surface.port

    async def snapshot(self) -> Snapshot:
        """What the agent is doing now (for /healthz, /metrics and /status)."""
        return await take_snapshot(self)

    def request_reload(self) -> None:
        """Re-read the config file soon (what SIGHUP does)."""
        self._reload.set()

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        secrets = _secrets(cfg)  # ConfigError before anything starts
        token = ack_token(cfg.status)
        require_installed(cfg.machines)  # NotInstalled (a ConfigError) too: e.g. no OPC UA stack here
        cfg.agent.state_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack, cfg)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                watchdog = await self._start(stack, cfg, secrets, token)
                upkeep = tg.create_task(self._upkeep.run(), name="upkeep")
                while not stop.is_set():
                    await _first(stop.wait(), self._reload.wait())
                    if self._reload.is_set() and not stop.is_set():
                        self._reload.clear()
                        await self._apply_reload()
                        self.reload_done.set()
                self._notifier.send(STOPPING="1", STATUS="stopping")
                log.info("stopping: last delivery attempt (at most %gs), then closing", STOP_BUDGET)
                deadline = asyncio.get_running_loop().time() + STOP_BUDGET
                await self._stop_machines(list(self._machines))
                await self._usage_seen()
                in_flight = deadline - STOP_BUDGET / 2 - asyncio.get_running_loop().time()
                sinks = list(self._sinks.values())
                answered = await asyncio.gather(*(self._stop_sink_task(s, in_flight) for s in sinks))
                watchdog.cancel()
                upkeep.cancel()
                for task in self._surface_tasks:
                    task.cancel()
            await asyncio.gather(*(self._last_delivery(s, deadline, ok) for s, ok in zip(sinks, answered, strict=True)))
        log.info("stopped")

    async def _open(self, stack: contextlib.AsyncExitStack, cfg: Config) -> None:
        """The state directory's lock, the drivers' factory, the outbox and the alert log (its state
        loaded, orphans cleared)."""
        lock = StateLock(cfg.agent.state_dir, "agent")
        await lock.acquire()  # waits while `send-test` delivers by itself (seconds)
        stack.callback(lock.release)
        if self._driver_factory is None:
            shared = Drivers()
            stack.push_async_callback(shared.aclose)
            self._driver_factory = shared
        self.outbox = outbox = await stack.enter_async_context(self._make_outbox(cfg))
        usage = UsageLog(cfg.usage, _tool_rules(cfg)) if cfg.usage.enabled else None
        self.alerts = AlertLog(
            outbox,
            gateway=cfg.agent.gateway_id,
            site=cfg.agent.site,
            on_commit=[self._wake_deliveries, self.surface.changed],
            observers=[self.history.observe, *self._observers],
            usage=usage,
            usage_observers=[*self._usage_observers, self.surface.usage_event],
        )
        await self.alerts.load()
        self.history.seed(self.alerts.active.values())
        self._upkeep = Upkeep(
            outbox, self.alerts, wall=self.clock.wall, on_done=self._wake_deliveries, usage_keep=cfg.usage.keep
        )
        self._upkeep.want([s.id for s in cfg.sinks], _known_alerts(cfg), _tool_rules(cfg))
        await self._upkeep.apply()  # refused (a full disk): said once, tried again in the background
        alerts = self.alerts
        self.surface.follow(lambda: list(alerts.active.values()))

    async def _start(
        self, stack: contextlib.AsyncExitStack, cfg: Config, secrets: Sequence[Secrets], token: str | None
    ) -> asyncio.Task[None]:
        """Start the sinks, the machines, the board and status endpoints, the stack lights and the
        watchdog (returned); say READY."""
        assert self._tg is not None and self.outbox is not None
        for sink_cfg, sink_secrets in zip(cfg.sinks, secrets, strict=True):
            await self._start_sink(sink_cfg, sink_secrets)
        for machine in cfg.machines:
            self._start_machine(machine)
        if cfg.status.listen:
            self._start_surface(cfg.status.listen, token)
        else:
            self.surface.ready.set()
        if self.surface.lights is not None:
            self._surface_tasks.append(self._tg.create_task(self.surface.lights.run(), name="lights"))
        await self._start_control(stack, cfg.agent.state_dir / SOCKET)
        alerts = self.alerts
        if alerts is not None and alerts.usage is not None:
            clock = run_clock(alerts.usage, alerts.commit_usage, self.clock.wall, lambda: list(alerts.active))
            self._surface_tasks.append(self._tg.create_task(clock, name="usage"))
        watchdog = self._tg.create_task(self._notifier.watchdog(), name="watchdog")
        log.info(
            "agent %s started: %d machine(s), %d rule(s), %d sink(s), %d event(s) waiting in the outbox%s",
            cfg.agent.gateway_id,
            len(cfg.machines),
            len(cfg.rules),
            len(cfg.sinks),
            self.outbox.sync.depth(),
            f", status on {cfg.status.listen}" if cfg.status.listen else "",
        )
        self._notifier.send(READY="1", STATUS=f"watching {len(cfg.machines)} machine(s)")
        self.started.set()
        return watchdog

    async def _last_delivery(self, running: _RunningSink, deadline: float, answered: bool) -> None:
        """One last try to deliver what waits for the sink, cut short at ``deadline`` (loop time); then
        close the sink. Not tried when the sink's batch in flight got no answer in time: the upstream
        hangs, and one more request would only hang until the deadline.
        """
        sink_id = running.delivery.sink.id
        try:
            if not answered:
                depth = await self.outbox.call(self.outbox.sync.depth, sink_id) if self.outbox else 0
                log.warning(
                    "sink %s: no answer to the batch in flight within the stop's time; %d event(s) wait in the outbox",
                    sink_id,
                    depth,
                )
                return
            async with asyncio.timeout_at(deadline):
                await running.delivery.flush()
        except (TimeoutError, OutboxError) as exc:
            log.warning(
                "sink %s: final delivery cut short (%s); the rest waits in the outbox",
                sink_id,
                exc or f"the stop may take at most {STOP_BUDGET:g}s",
            )
        finally:
            await running.stack.aclose()

    # -- building blocks ----------------------------------------------------------------------

    def _start_surface(self, listen: str, token: str | None) -> None:
        """The board and /healthz, /metrics, /status on one listener, started after the first polls."""
        from agent.ops.status import StatusEndpoints  # prometheus-client only when it is used

        assert self._tg is not None
        charts = None
        if self.cfg.usage.enabled:
            from agent.pipeline.usagecharts import UsageCharts  # the SVG module: only with the board

            charts = UsageCharts(self.cfg.agent.state_dir / "outbox.db", lambda: [m.id for m in self.cfg.machines])
        feed = BoardFeed(self, self.history, ack=token is not None, lights=self.surface.lights, usage=charts)
        first_polls = [runner.first_poll for runner in self.machines]
        serving = self.surface.serve(feed, listen, token, StatusEndpoints(self.snapshot), first_polls)
        self._surface_tasks.append(self._tg.create_task(serving, name="board"))

    async def _start_control(self, stack: contextlib.AsyncExitStack, path: Path) -> None:
        """Answer ``send-test`` on the control socket; a socket that cannot be made must not stop the alerting."""
        try:
            await stack.enter_async_context(ControlServer(path, self._control))
        except OSError as exc:
            log.error("control socket %s is off (%s): `send-test` cannot ask this agent; alerting goes on", path, exc)

    async def _control(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """A request on the control socket: ``{"command": "send-test", "timeouts": {sink: seconds}}``."""
        timeouts = request.get("timeouts")
        if request.get("command") != "send-test" or not isinstance(timeouts, dict) or not timeouts:
            return {"error": f"unknown request: {request.get('command')!r}"}
        unknown = sorted(set(timeouts) - {s.id for s in self.cfg.sinks})
        if unknown:
            return {"error": f"the running agent has no sink {unknown[0]!r} (was the config changed without a reload?)"}
        assert self.alerts is not None and self.outbox is not None
        deliveries = {sink_id: running.delivery for sink_id, running in self._sinks.items()}
        seconds = {str(k): float(v) for k, v in timeouts.items()}
        seq, verdicts = await send_test(self.alerts, self.outbox, deliveries, seconds, by=" via the running agent")
        return {"seq": seq, "verdicts": [v.to_json() for v in verdicts]}

    async def _usage_seen(self) -> None:
        """A clean stop: the usage fold watched the machines until now."""
        alerts = self.alerts
        if alerts is None:
            return
        try:
            await alerts.commit_usage(lambda u: u.seen(self.clock.wall(), list(alerts.active)))
        except OutboxError as exc:
            log.warning(
                "usage: the stop could not be stored (%s): the time since the last mark counts as not watched", exc
            )

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
        origin = Origin(self.cfg.agent.gateway_id, self.cfg.agent.site)
        sink = await stack.enter_async_context(sink_plugin(sink_cfg.kind).open(sink_cfg, secrets, origin))
        report_drops = self.alerts.report_drops if self.alerts is not None else None
        delivery = make_delivery(self.cfg, sink_cfg, sink, self.outbox, report_drops)
        task = self._tg.create_task(delivery.run(), name=f"sink:{sink_cfg.id}")
        self._sinks[sink_cfg.id] = _RunningSink(sink_cfg, secrets, delivery, stack, task)

    async def _stop_sink_task(self, running: _RunningSink, wait: float = FLUSH_TIMEOUT) -> bool:
        """Let the sink finish its batch in flight (so nothing is sent twice), then stop it.

        Returns False when the batch got no answer within ``wait`` seconds and the task was cancelled.
        """
        running.delivery.stop()
        _, late = await asyncio.wait({running.task}, timeout=max(0.0, wait))
        for task in late:
            task.cancel()
            await asyncio.wait({task})
        return not late

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
        await self._stop_machines([machine_id])

    async def _stop_machines(self, machine_ids: Sequence[str]) -> None:
        """Stop machines all at once (each driver's close is bounded; one slow close must not add up)."""
        tasks = {self._machines.pop(machine_id)[1] for machine_id in machine_ids}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- reload -------------------------------------------------------------------------------

    async def _apply_reload(self) -> None:
        """Apply a changed config file; an invalid one is refused and the running config stays."""
        if self._config_path is None:
            log.warning("reload requested, but the agent was not started from a config file")
            return
        try:
            new = load_config(self._config_path)
            secrets = _secrets(new)
            require_installed(new.machines)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return
        self._notifier.send(RELOADING="1", STATUS="reloading the config")
        old = self.cfg
        for section in ("agent", "outbox", "status", "lights", "usage"):
            if getattr(old, section) != getattr(new, section):
                log.warning("reload: changes to [%s] take effect after a restart", section)
        restart_only = {
            "agent": old.agent,
            "outbox": old.outbox,
            "status": old.status,
            "lights": old.lights,
            "usage": old.usage,
        }
        new = new.model_copy(update=restart_only)
        new_secrets = {s.id: secret for s, secret in zip(new.sinks, secrets, strict=True)}
        await self._stop_changed(old, new, new_secrets)
        self.cfg = new
        self._upkeep.want([s.id for s in new.sinks], _known_alerts(new), _tool_rules(new))
        await self._upkeep.apply()
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

    async def _stop_changed(self, old: Config, new: Config, new_secrets: dict[str, Secrets]) -> None:
        """Stop the sinks and machines that the new config changes or drops (the changed ones restart
        afterwards; a machine's active alerts and its rules' saved states come back from the outbox).
        Changed ``[alerts]`` (flood handling, every machine's) restart every machine."""
        new_sinks = {s.id: s for s in new.sinks}
        for sink_id, running in list(self._sinks.items()):
            if new_sinks.get(sink_id) != running.config or new_secrets.get(sink_id) != running.secrets:
                await self._stop_sink_task(running)
                await running.stack.aclose()
                del self._sinks[sink_id]

        def rules_of(cfg: Config, machine_id: str) -> list[Rule]:
            return [r for r in cfg.rules if r.machine == machine_id]

        if old.alerts != new.alerts:
            log.info("reload: [alerts] changed: every machine restarts with it (a flood in progress is forgotten)")
        new_machines = {m.id: m for m in new.machines}
        stopping = [
            machine_id
            for machine_id, (runner, _) in self._machines.items()
            if new_machines.get(machine_id) != runner.machine
            or rules_of(new, machine_id) != rules_of(old, machine_id)
            or old.alerts != new.alerts
        ]
        await self._stop_machines(stopping)


def make_delivery(
    cfg: Config,
    sink_cfg: SinkConfigBase,
    sink: Sink,
    outbox: AsyncOutbox,
    report_drops: Callable[[], Awaitable[object]] | None,
) -> Delivery:
    """The delivery loop of one open sink, as the agent runs it (``send-test`` without an agent too)."""
    return Delivery(
        sink,
        outbox,
        batch_size=cfg.outbox.batch_size,
        retry_max=sink_cfg.retry_max,
        linger=cfg.outbox.linger,
        report_drops=report_drops,
        route=sink_plugin(sink_cfg.kind).route(sink_cfg),
    )


@dataclass
class _RunningSink:
    config: SinkConfigBase
    secrets: Secrets
    delivery: Delivery
    stack: contextlib.AsyncExitStack  # leaving it closes the sink
    task: asyncio.Task[None]


def _tool_rules(cfg: Config) -> dict[str, dict[str, str]]:
    """Each machine's tool rules, for the usage fold."""
    return tool_rules((m.id for m in cfg.machines), cfg.rules)


def _known_alerts(cfg: Config) -> set[str]:
    """The ``<machine>/<rule>`` keys the config knows: its rules', and each machine's own alerts
    (the runner clears a flood, and an unreadable alert no rule needs any more)."""
    known = {f"{r.machine}/{r.id}" for r in cfg.rules}
    known |= {f"{m.id}/{own}" for m in cfg.machines for own in (OFFLINE, FLOOD, UNREADABLE)}
    return known


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
