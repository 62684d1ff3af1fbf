"""Stack lights (``[[lights]]``): the lamps of a signal tower follow the active alerts.

::

    active alerts --lamps_for() (pure)--> Lamps --writes_for() (pure)--> [(table, address, on)]
                                            |
    Lights.show() on every commit --> StackLight.show() (never blocks) --> run(): write on change
                                                                           and every 10 s; backoff

The lamps are a pure function of the active alerts of the tower's machines (IEC 60073 colours):
red while any critical alert is active, yellow while a warning is and nothing critical, green while
nothing is active, blue while a machine is offline, the buzzer while a critical alert is not
acknowledged. A tower that does not answer is retried with capped, jittered backoff in its own
task: alerting never waits for it. This is the only place the agent writes to a device, and the
config accepts a light only with ``write = true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential_jitter

from agent.config import LAMP_NAMES, Lamp, LightConfig
from agent.errors import LightError
from agent.model import Severity
from agent.ops.logs import Trouble

log = logging.getLogger("andon.lights")

REFRESH = 10.0  # seconds: the lamps are written again this often (a tower that lost power catches up)
BACKOFF_MAX = 30.0  # cap of the reconnect backoff
OFFLINE_RULE = "offline"

LampWrite = tuple[str, int, bool]  # (table "coil" | "holding", address, on)


class ShownAlert(Protocol):
    """What the lamps need to know of an active alert."""

    @property
    def key(self) -> str: ...  # "<machine>/<rule>" or "<machine>/<rule>/<condition>"

    @property
    def severity(self) -> Severity: ...

    @property
    def acknowledged(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Lamps:
    red: bool = False
    yellow: bool = False
    green: bool = False
    blue: bool = False
    buzzer: bool = False

    def describe(self) -> str:
        on = [name for name in LAMP_NAMES if getattr(self, name)]
        return "+".join(on) or "dark"


def _machine(key: str) -> str:
    return key.split("/", 1)[0]


def _offline(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 2 and parts[1] == OFFLINE_RULE


def lamps_for(alerts: Iterable[ShownAlert], machines: Collection[str] | None = None) -> Lamps:
    """The lamps for the active ``alerts`` of ``machines`` (None: every machine). Pure."""
    mine = [a for a in alerts if machines is None or _machine(a.key) in machines]
    critical = [a for a in mine if a.severity is Severity.CRITICAL]
    return Lamps(
        red=bool(critical),
        yellow=not critical and any(a.severity is Severity.WARNING for a in mine),
        green=not mine,
        blue=any(_offline(a.key) for a in mine),
        buzzer=any(not a.acknowledged for a in critical),
    )


def writes_for(cfg: LightConfig, lamps: Lamps) -> list[LampWrite]:
    """The writes that show ``lamps`` on the tower: one per configured lamp, in LAMP_NAMES order. Pure."""
    out: list[LampWrite] = []
    for name in LAMP_NAMES:
        lamp: Lamp | None = getattr(cfg, name)
        if lamp is not None:
            out.append((lamp.table, lamp.address, bool(getattr(lamps, name))))
    return out


class LampWriter(Protocol):
    """One connection to one tower (:class:`drivers.modbus.lamps.ModbusLampWriter`, which the
    pipeline hands in). ``write`` only inside ``async with``, never concurrently; both raise
    :class:`~agent.errors.LightError` and are bounded in time."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def write(self, writes: Sequence[LampWrite]) -> None: ...


class StackLight:
    """Drives one tower. :meth:`show` only records what to show; :meth:`run` (a task) writes it.

    ``shown``, ``writes``, ``failures`` and ``last_error`` tell how it goes; ``on_change`` is
    called after each write of the whole tower and each failure.
    """

    def __init__(
        self,
        cfg: LightConfig,
        writer: Callable[[LightConfig], LampWriter],
        *,
        refresh: float = REFRESH,
        backoff_max: float = BACKOFF_MAX,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_change = on_change or (lambda: None)
        self._writer = writer
        self._refresh = refresh
        self._backoff_max = backoff_max
        self.wanted: Lamps | None = None  # what the alerts say (None until the first show)
        self.shown: Lamps | None = None  # what the tower took last (None while it does not answer)
        self.writes = 0  # successful writes of the whole tower
        self.failures = 0  # failed connections and writes
        self._changed = asyncio.Event()
        self._trouble = Trouble(log, f"stack light {cfg.id} ({cfg.host}:{cfg.port})")

    @property
    def last_error(self) -> str | None:
        return self._trouble.last_error

    def show(self, lamps: Lamps) -> None:
        """Show ``lamps`` from now on (written at once when they changed). Never blocks."""
        if lamps != self.wanted:
            self.wanted = lamps
            self._changed.set()

    async def run(self) -> None:
        """Write forever: on change and every ``refresh``; reconnect with backoff when the tower fails."""
        cap = self._backoff_max
        while True:  # a session that had written ends quietly: the backoff starts afresh
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential_jitter(multiplier=0.25, max=cap, jitter=min(1.0, cap / 4)),
                stop=stop_never,
                before_sleep=self._failed,
            ):
                with attempt:
                    await self._session()

    def _failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.shown = None
        self.failures += 1
        if isinstance(exc, LightError):
            self._trouble.fail(exc, "retrying with backoff; alerting goes on")
        else:  # a bug: keep the light's task alive, show the traceback once
            log.error("stack light %s: unexpected error; retrying", self.cfg.id, exc_info=exc)
        self._on_change()

    async def _session(self) -> None:
        """One connection's life: raises if it never wrote, returns when a working one breaks."""
        wrote = False
        async with self._writer(self.cfg) as writer:
            while True:
                if self.wanted is not None:
                    lamps = self.wanted
                    self._changed.clear()
                    try:
                        await writer.write(writes_for(self.cfg, lamps))
                    except LightError as exc:
                        if not wrote:
                            raise
                        self.shown = None
                        self.failures += 1
                        self._trouble.fail(exc, "reconnecting; alerting goes on")
                        self._on_change()
                        return
                    if lamps != self.shown:
                        log.info("stack light %s shows %s", self.cfg.id, lamps.describe())
                    self.shown, wrote = lamps, True
                    self.writes += 1
                    self._trouble.ok("writing again")
                    self._on_change()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._refresh):
                        await self._changed.wait()


class Lights:
    """Every configured stack light. :meth:`show` is cheap and never blocks (call it on every commit)."""

    def __init__(self, lights: Sequence[StackLight]) -> None:
        self.lights = list(lights)

    @classmethod
    def from_config(
        cls,
        cfgs: Sequence[LightConfig],
        writer: Callable[[LightConfig], LampWriter],
        *,
        refresh: float = REFRESH,
        backoff_max: float = BACKOFF_MAX,
        on_change: Callable[[], None] | None = None,
    ) -> Lights:
        return cls([StackLight(c, writer, refresh=refresh, backoff_max=backoff_max, on_change=on_change) for c in cfgs])

    def show(self, alerts: Iterable[ShownAlert]) -> None:
        active = list(alerts)
        for light in self.lights:
            light.show(lamps_for(active, light.cfg.machines))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for light in self.lights:
                tg.create_task(light.run(), name=f"light:{light.cfg.id}")
