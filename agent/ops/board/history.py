"""The board's 24-hour memory of alerts: each alert's active stretches, per machine, for the time line.

Fed by the alert log's observer (one call per committed transition) and seeded with the alerts
still active at start, so an alert raised before a restart shows from its raise. Bounded: stretches
that ended more than ``keep`` ago are dropped, and each machine keeps at most ``max_bars`` (the
oldest go first), so a chattering signal cannot grow it. Held in memory: stretches that ended
before a restart are not shown after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from agent.model import Severity, Transition, TransitionKind


@dataclass(frozen=True, slots=True)
class Bar:
    """One stretch of one alert: ``end`` None while it is still active. ``colour``: critical,
    warning, info or offline (:data:`agent.ops.board.svg.FILL`)."""

    key: str
    colour: str
    start: float  # wall clock
    end: float | None
    label: str = ""  # tooltip text (the alert's message)


KEEP = 24 * 3600.0
MAX_BARS = 500
OFFLINE_RULE = "offline"


class Active(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def severity(self) -> Severity: ...

    @property
    def since(self) -> float: ...

    @property
    def message(self) -> str: ...


def colour_of(key: str, severity: Severity) -> str:
    """The time line's colour: blue for a machine's offline alert, else its severity."""
    parts = key.split("/")
    if len(parts) == 2 and parts[1] == OFFLINE_RULE:
        return "offline"
    return severity.label


class AlertHistory:
    """Per machine, the stretches of its alerts. Not thread-safe; call from the event loop."""

    def __init__(self, *, keep: float = KEEP, max_bars: int = MAX_BARS) -> None:
        self._keep = keep
        self._max = max_bars
        self._closed: dict[str, deque[Bar]] = {}  # machine -> ended stretches, oldest first
        self._open: dict[str, Bar] = {}  # alert key -> its current stretch

    def seed(self, active: Iterable[Active]) -> None:
        """Start the stretches of the alerts active when the agent starts (from their raise)."""
        for a in active:
            self._open[a.key] = Bar(a.key, colour_of(a.key, a.severity), a.since, None, a.message)

    def observe(self, t: Transition, *_: object) -> None:
        """An alert log observer: a raise opens a stretch, a severity change starts a new one, a clear ends it."""
        key = t.key
        current = self._open.get(key)
        if t.kind is TransitionKind.CLEARED:
            if current is not None:
                self._close(current, t.time)
                del self._open[key]
            return
        colour = colour_of(key, t.severity)
        if current is not None and current.colour == colour:
            self._open[key] = Bar(key, colour, current.start, None, t.message)
            return
        if current is not None:
            self._close(current, t.time)
        self._open[key] = Bar(key, colour, t.time, None, t.message)

    def _close(self, bar: Bar, end: float) -> None:
        machine = bar.key.split("/", 1)[0]
        bars = self._closed.setdefault(machine, deque(maxlen=self._max))
        bars.append(Bar(bar.key, bar.colour, bar.start, max(end, bar.start), bar.label))

    def bars(self, machine: str, now: float) -> list[Bar]:
        """The machine's stretches that reach into the last ``keep`` seconds, oldest first."""
        cutoff = now - self._keep
        closed = self._closed.get(machine)
        if closed is not None:
            while closed and closed[0].end is not None and closed[0].end < cutoff:
                closed.popleft()
        out = [b for b in closed or () if b.end is None or b.end >= cutoff]
        out += [b for k, b in self._open.items() if k.split("/", 1)[0] == machine]
        return out
