"""What people on site see of the running agent: the board, the status endpoints and the stack lights.

::

    AlertLog commit --on_commit--> Surface.changed() --> BoardServer.changed(): one render for all open boards
                                                    +--> Lights.show(active): never blocks; towers write in tasks
    AlertLog observer ----------> AlertHistory.observe: the board's 24-hour time lines
    AlertLog usage observer ----> Surface.usage_event --> UsageCharts.poke: the usage charts are redrawn soon

:class:`BoardFeed` is the board's :class:`~agent.ops.board.web.BoardSource`: it reads the runners
and the alert log of the :class:`~agent.pipeline.snapshot.Running` agent, and acknowledges through
:meth:`~agent.pipeline.alertlog.AlertLog.acknowledge`; its usage charts
(:class:`~agent.pipeline.usagecharts.UsageCharts`, with ``[usage] enabled``) are redrawn by a task
that runs with the listener. :func:`serve` runs the listener: it starts
once every machine's first poll is over (or after :data:`FIRST_POLL_WAIT`), so importing the web
framework never delays the first reads, and a port already taken turns the board and the status
endpoints off with one ERROR line while alerting goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.config.base import KeyProblem, read_secret
from agent.config.sections import LightConfig, StatusSection
from agent.errors import ConfigError
from agent.ops.board.history import AlertHistory
from agent.ops.board.view import LightInfo, MachineInfo, board_view
from agent.ops.lights import LampWriter, Lights
from agent.pipeline.alertlog import ActiveAlert
from agent.pipeline.snapshot import Running

if TYPE_CHECKING:
    from agent.ops.status import StatusEndpoints
    from agent.pipeline.usagecharts import UsageCharts

log = logging.getLogger("andon.runtime")

FIRST_POLL_WAIT = 2.0  # seconds the listener waits at most for the machines' first polls


def modbus_lamps(cfg: LightConfig) -> LampWriter:
    """The writer of a ``[[lights]]`` tower: pymodbus's client, imported only when a light is configured."""
    from drivers.modbus.lamps import ModbusLampWriter

    return ModbusLampWriter(cfg.id, cfg.host, cfg.port, unit=cfg.unit, timeout=cfg.timeout)


def ack_token(status: StatusSection) -> str | None:
    """The acknowledgement token (``[status] ack_token_env`` / ``ack_token_file``), read now; None
    without either. ConfigError (one line, naming the key, never the token) if it cannot be read."""
    try:
        return read_secret("ack_token", status.ack_token_env, status.ack_token_file)
    except KeyProblem as exc:
        raise ConfigError(f"status.{exc.key}: {exc}") from None


class BoardFeed:
    """The board's view of the running agent. Reads only; called on the event loop."""

    def __init__(
        self,
        agent: Running,
        history: AlertHistory,
        *,
        ack: bool,
        lights: Lights | None = None,
        usage: UsageCharts | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._agent = agent
        self._history = history
        self._ack = ack
        self._lights = lights
        self.usage = usage
        self._now = now

    def view(self) -> dict[str, Any]:
        agent = self._agent
        runners = {r.machine.id: r for r in agent.machines}
        machines = []
        for m in agent.cfg.machines:  # the config's order
            runner = runners.get(m.id)
            connected = runner is not None and runner.status.connected
            last_good = runner.status.last_good if runner is not None else None
            machines.append(MachineInfo(m.id, m.protocol, connected, last_good))
        lights = [
            LightInfo(
                light.cfg.id,
                light.shown.describe() if light.shown is not None else "unknown",
                light.shown is not None,
                light.last_error,
            )
            for light in (self._lights.lights if self._lights else ())
        ]
        active = agent.alerts.active.values() if agent.alerts is not None else ()
        cfg = agent.cfg
        return board_view(
            gateway=cfg.agent.gateway_id,
            site=cfg.agent.site,
            machines=machines,
            alerts=active,
            ack=self._ack,
            lights=lights,
            charts=self.usage.names() if self.usage is not None else (),
            charts_version=self.usage.version if self.usage is not None else 0,
        )

    def alert(self, key: str) -> ActiveAlert | None:
        alerts = self._agent.alerts
        return alerts.active.get(key) if alerts is not None else None

    async def acknowledge(self, key: str, by: str, note: str | None) -> bool:
        alerts = self._agent.alerts
        return alerts is not None and await alerts.acknowledge(key, by, note) is not None

    def history_svg(self, machine: str) -> str | None:
        if not any(m.id == machine for m in self._agent.cfg.machines):
            return None
        from agent.ops.board.svg import timeline  # loaded with the board, not with the agent

        now = self._now()
        return timeline(self._history.bars(machine, now), now)

    def chart_svg(self, name: str) -> str | None:
        return self.usage.get(name) if self.usage is not None else None


class Surface:
    """The board's server (once it runs) and the stack lights, told of every commit."""

    def __init__(self, lights: Sequence[LightConfig] = ()) -> None:
        self.lights = Lights.from_config(lights, modbus_lamps, on_change=self._board_changed) if lights else None
        self.board: Any = None  # the BoardServer while it runs (typed loosely: the web framework loads late)
        self.port: int | None = None
        self.ready = asyncio.Event()  # set once the listener is up, or could not start
        self.charts: UsageCharts | None = None  # the board's usage charts while it runs
        self._active: Callable[[], list[ActiveAlert]] = list

    def follow(self, active: Callable[[], list[ActiveAlert]]) -> None:
        """Where the active alerts come from; the lights show them at once."""
        self._active = active
        self.changed()

    def changed(self) -> None:
        """An AlertLog ``on_commit`` callback: cheap, never blocks."""
        if self.lights is not None:
            self.lights.show(self._active())
        self._board_changed()

    def _board_changed(self) -> None:
        if self.board is not None:
            self.board.changed()

    def usage_event(self, *_: object) -> None:
        """An AlertLog usage observer (a tool change, a summary): the charts are redrawn soon."""
        if self.charts is not None:
            self.charts.poke()

    async def serve(
        self,
        feed: BoardFeed,
        listen: str,
        token: str | None,
        status: StatusEndpoints,
        first_polls: list[asyncio.Event],
    ) -> None:
        """Run the board and the status endpoints on ``listen`` until cancelled."""
        if first_polls:
            waits = [asyncio.ensure_future(e.wait()) for e in first_polls]
            await asyncio.wait(waits, timeout=FIRST_POLL_WAIT)
            for w in waits:
                w.cancel()
        from agent.ops.board.web import BoardServer  # the web framework: only now, and only with [status] listen
        from agent.ops.status import parse_listen

        host, port = parse_listen(listen)
        try:
            server = BoardServer(feed, host, port, token=token, status=status.answer)
            await server.__aenter__()
        except OSError as exc:
            log.error(
                "the board and the status endpoints are off: cannot listen on %s (%s); alerting goes on", listen, exc
            )
            self.ready.set()
            return
        self.board, self.port = server, server.port
        self.ready.set()
        log.info("andon board on http://%s:%d/%s", host, server.port, " (acknowledgement on)" if token else "")
        self.charts = feed.usage
        charts = asyncio.create_task(feed.usage.run(self._board_changed), name="board:charts") if feed.usage else None
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.board = self.charts = None
            if charts is not None:
                charts.cancel()
            await server.__aexit__(None, None, None)
