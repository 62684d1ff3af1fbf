"""What of a rule's state an active alert keeps on disk, so that a restart neither clears it nor raises it again.

Pure: the caller (the machine runner) passes the offset between its clocks. A rule's times are
monotonic, which do not survive a restart, so they are saved on the wall clock (``to_wall`` =
wall - monotonic, now) and turned back on restore (``to_mono`` = monotonic - wall, then).

Per kind: ``threshold``, ``fault``, ``code`` and ``tool_life`` judge each reading on its own, so
``active`` and ``threshold`` are all they need (restored already). ``forecast`` needs its window of
readings (else it has no trend and clears), ``stale`` when its signal last changed (else it starts
counting again and clears). Every kind keeps its chattering state: an alert held active because it
chattered must not clear at a restart. A saved state that does not fit the rule (another kind after
a reload, a damaged entry) is ignored: the rule then starts afresh, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.config.rules import ForecastRule, Rule, StaleRule
from agent.model import Severity
from agent.rules import RuleState
from agent.rules.kinds import ForecastMemo, StaleMemo


def _wall(t: float | None, to_wall: float) -> float | None:
    return None if t is None else round(t + to_wall, 3)


def _mono(t: Any, to_mono: float) -> float | None:
    return None if t is None else float(t) + to_mono


def saved_state(state: RuleState, to_wall: float) -> dict[str, Any]:
    """The JSON-able part of ``state`` a restart needs (times on the wall clock)."""
    out: dict[str, Any] = {}
    if state.chattering:
        out["chattering"] = True
    if state.raises:
        out["raises"] = [_wall(t, to_wall) for t in state.raises]
    memo = state.memo
    if isinstance(memo, ForecastMemo):
        out["forecast"] = {"points": [[_wall(t, to_wall), v] for t, v in memo.points], "last": memo.last}
    elif isinstance(memo, StaleMemo) and memo.changed_at is not None:
        out["stale"] = {
            "value": memo.value,
            "changed_at": _wall(memo.changed_at, to_wall),
            "running": memo.running,
            "running_since": _wall(memo.running_since, to_wall),
        }
    return out


def _memo(rule: Rule, saved: Mapping[str, Any], to_mono: float) -> Any:
    if isinstance(rule, ForecastRule) and "forecast" in saved:
        f = saved["forecast"]
        points = tuple((float(t) + to_mono, float(v)) for t, v in f["points"])
        return ForecastMemo(points, None if f["last"] is None else float(f["last"]))
    if isinstance(rule, StaleRule) and "stale" in saved:
        s = saved["stale"]
        return StaleMemo(
            s["value"], _mono(s["changed_at"], to_mono), bool(s["running"]), _mono(s["running_since"], to_mono)
        )
    return None


def restored_state(
    rule: Rule, active: Severity, threshold: float | None, saved: Mapping[str, Any] | None, to_mono: float
) -> RuleState:
    """The state of ``rule`` whose alert is active after a restart, from what :func:`saved_state` kept."""
    plain = RuleState(active=active, threshold=threshold)
    if not saved:
        return plain
    try:
        raises = tuple(float(t) + to_mono for t in saved.get("raises", ()))
        memo = _memo(rule, saved, to_mono)
    except (KeyError, TypeError, ValueError):  # not what this version wrote: start afresh
        return plain
    return RuleState(
        active=active, threshold=threshold, raises=raises, chattering=bool(saved.get("chattering")), memo=memo
    )
