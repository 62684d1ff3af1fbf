"""What the andon board shows, as plain JSON-ready data: a pure function of the machines and alerts.

A machine's ``state`` is ``offline`` while its offline alert is active, else the severity of its
worst active alert (``critical``, ``warning``, ``info``), else ``ok``. Alerts are listed worst
first, then oldest first. Times are milliseconds since the epoch (what the page's clock uses).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.model import Severity

OFFLINE_RULE = "offline"


class BoardAlert(Protocol):
    """What the board needs of an active alert (:class:`agent.pipeline.alertlog.ActiveAlert` has it)."""

    @property
    def key(self) -> str: ...

    @property
    def severity(self) -> Severity: ...

    @property
    def message(self) -> str: ...

    @property
    def since(self) -> float: ...

    @property
    def ack_by(self) -> str | None: ...

    @property
    def ack_at(self) -> float | None: ...

    @property
    def ack_note(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class MachineInfo:
    id: str
    protocol: str = ""
    connected: bool = False
    last_good: float | None = None  # wall clock of the last good read


@dataclass(frozen=True, slots=True)
class LightInfo:
    id: str
    shows: str  # "red+buzzer", "green", "dark" or "unknown" (not reachable)
    up: bool
    error: str | None = None


def _ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


def split_key(key: str) -> tuple[str, str, str | None]:
    """``"<machine>/<rule>"`` or ``"<machine>/<rule>/<condition>"`` -> (machine, rule, condition)."""
    machine, _, rest = key.partition("/")
    rule, _, condition = rest.partition("/")
    return machine, rule, condition or None


def machine_state(alerts: Sequence[BoardAlert]) -> str:
    """``offline``, ``critical``, ``warning``, ``info`` or ``ok`` for one machine's active alerts."""
    if any(split_key(a.key)[1:] == (OFFLINE_RULE, None) for a in alerts):
        return "offline"
    if not alerts:
        return "ok"
    return max(a.severity for a in alerts).label


def alert_view(a: BoardAlert) -> dict[str, Any]:
    machine, rule, condition = split_key(a.key)
    ack = None if a.ack_at is None else {"by": a.ack_by, "at": _ms(a.ack_at), "note": a.ack_note}
    return {
        "alert": a.key,
        "machine": machine,
        "rule": rule,
        "condition": condition,
        "severity": a.severity.label,
        "offline": rule == OFFLINE_RULE and condition is None,
        "message": a.message,
        "since": _ms(a.since),
        "ack": ack,
    }


def board_view(
    *,
    gateway: str,
    site: str | None,
    machines: Sequence[MachineInfo],
    alerts: Iterable[BoardAlert],
    ack: bool,
    lights: Sequence[LightInfo] = (),
    charts: Sequence[str] = (),
    charts_version: int = 0,
) -> dict[str, Any]:
    """The whole board. Machines keep the config's order; an alert of a machine not in the list is
    shown under its own tile (so nothing active is ever hidden). ``charts``: the names of the usage
    charts (``/api/charts/<name>.svg``); ``charts_version`` changes whenever one of them changed."""
    by_machine: dict[str, list[BoardAlert]] = {m.id: [] for m in machines}
    for a in alerts:
        by_machine.setdefault(split_key(a.key)[0], []).append(a)
    info = {m.id: m for m in machines}
    tiles = []
    for mid, mine in by_machine.items():
        mine.sort(key=lambda a: (-a.severity, a.since, a.key))
        m = info.get(mid, MachineInfo(mid))
        tiles.append(
            {
                "id": mid,
                "protocol": m.protocol,
                "state": machine_state(mine),
                "connected": m.connected,
                "last_good": _ms(m.last_good),
                "alerts": [alert_view(a) for a in mine],
            }
        )
    return {
        "gateway": gateway,
        "site": site,
        "ack": ack,
        "machines": tiles,
        "lights": [{"id": li.id, "shows": li.shows, "up": li.up, "error": li.error} for li in lights],
        "charts": list(charts),
        "charts_version": charts_version,
    }
