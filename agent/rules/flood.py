"""Flood handling for one machine: the excess of a burst of alerts is summarised, not sent one by one.

EEMUA 191 calls more than 10 alarms in 10 minutes per operator a flood. Here a machine floods when
its rules raise ``flood_count`` alerts within ``flood_window``. From then on its rules' events are
held instead of sent (only the newest per alert is kept) and one ``<machine>/flood`` alert tells
the service team, escalating to the worst severity held (at once) and updated with the count at
most once per ``flood_window``.
The flood ends when the machine produced at most ``flood_count // 2`` events in the last
``flood_window``: the flood alert is cleared and each held alert is brought up to date upstream with
one event (raised if upstream does not have it active, updated if it does, cleared if it is no
longer active), so every alert's lifecycle stays whole.

Pure: :func:`admit` takes the transitions of one evaluation, :func:`flood_tick` lets time pass.
``upstream`` is the set of alerts the outbox has active (what the service team sees). A restart
forgets a flood; the rule states are restored from ``upstream`` and so stay consistent with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from agent.config.sections import AlertsSection
from agent.model import Severity, Transition, TransitionKind

FLOOD = "flood"  # the rule id of the "<machine>/flood" alert
R, U, C = TransitionKind.RAISED, TransitionKind.UPDATED, TransitionKind.CLEARED


@dataclass(frozen=True, slots=True)
class FloodState:
    """What the flood gate remembers; every tuple is bounded (by flood_count + 1, or the machine's rules)."""

    raises: tuple[float, ...] = ()  # monotonic times of recent raises passed on
    produced: tuple[float, ...] = ()  # during a flood: times of events produced (held)
    flooding: bool = False
    held: tuple[Transition, ...] = ()  # the newest held transition per alert key
    held_count: int = 0  # events held during this flood
    reported: int = 0  # held_count at the flood alert's last event
    noted_at: float | None = None  # monotonic time of the flood alert's last event
    severity: Severity = Severity.WARNING  # of the flood alert: the worst severity held
    sent_severity: Severity = Severity.WARNING  # the flood alert's severity as last sent


def _recent(times: tuple[float, ...], now: float, window: float, keep: int) -> tuple[float, ...]:
    return tuple(t for t in times if now - t < window)[-keep:]


def _flood_event(
    machine: str, kind: TransitionKind, state: FloodState, cfg: AlertsSection, wall: float, message: str
) -> Transition:
    keys = sorted({t.key for t in state.held})
    return Transition(
        machine=machine,
        rule=FLOOD,
        signal=None,
        kind=kind,
        severity=state.severity,
        value=state.held_count,
        threshold=float(cfg.flood_count),
        message=message,
        time=wall,
        extra={"kind": FLOOD, "held_events": state.held_count, "held_alerts": keys},
    )


def _window_text(cfg: AlertsSection) -> str:
    seconds = cfg.flood_window
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _held_text(state: FloodState) -> str:
    keys = sorted({t.key.split("/", 1)[1] for t in state.held})
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"{state.held_count} event(s) held so far ({shown})" if keys else "none held yet"


def admit(
    cfg: AlertsSection, machine: str, state: FloodState, transitions: Sequence[Transition], now: float
) -> tuple[FloodState, list[Transition]]:
    """Pass the transitions on, or hold them while the machine floods. Returns what to send."""
    if cfg.flood_count == 0 or not transitions:
        return state, list(transitions)
    out: list[Transition] = []
    keep = cfg.flood_count + 1
    for t in transitions:
        if not state.flooding:
            raises = _recent(state.raises, now, cfg.flood_window, keep)
            if t.kind is R and len(raises) >= cfg.flood_count:
                state = FloodState(raises=raises, produced=(*raises, now)[-keep:], flooding=True, noted_at=now)
                state = _hold(state, t)
                out.append(
                    _flood_event(
                        machine,
                        R,
                        state,
                        cfg,
                        t.time,
                        f"{machine} raised more than {cfg.flood_count} alerts within {_window_text(cfg)}: its "
                        "further alert changes are summarised in this alert until it calms down; check the "
                        "machine (and whether its alert rules are too sensitive)",
                    )
                )
                state = replace(state, reported=state.held_count, sent_severity=state.severity)
                continue
            state = replace(state, raises=(*raises, now)[-keep:] if t.kind is R else raises)
            out.append(t)
        else:
            produced = (*_recent(state.produced, now, cfg.flood_window, keep), now)[-keep:]
            state = _hold(replace(state, produced=produced), t)
    if state.flooding:
        state, more = _escalate(cfg, machine, state, now, transitions[-1].time)
        out += more
    return state, out


def _hold(state: FloodState, t: Transition) -> FloodState:
    held = (*(h for h in state.held if h.key != t.key), t)
    worst = max(state.severity, t.severity) if t.kind is not C else state.severity
    return replace(state, held=held, held_count=state.held_count + 1, severity=worst)


def _escalate(
    cfg: AlertsSection, machine: str, state: FloodState, now: float, wall: float
) -> tuple[FloodState, list[Transition]]:
    """Update the flood alert at once when a held alert is worse than it."""
    if state.severity <= state.sent_severity:
        return state, []
    t = _flood_event(
        machine,
        U,
        state,
        cfg,
        wall,
        f"{machine} is still flooding, now with {state.severity.label} alerts: {_held_text(state)}; "
        "they are sent when it calms down",
    )
    return replace(state, reported=state.held_count, noted_at=now, sent_severity=state.severity), [t]


def flood_tick(
    cfg: AlertsSection,
    machine: str,
    state: FloodState,
    now: float,
    wall: float,
    upstream: Mapping[str, Severity],
) -> tuple[FloodState, list[Transition]]:
    """Let time pass: end the flood when the machine calmed down, or update the flood alert's count."""
    if not state.flooding:
        return state, []
    keep = cfg.flood_count + 1
    produced = _recent(state.produced, now, cfg.flood_window, keep)
    if len(produced) <= cfg.flood_count // 2:
        out = [
            _flood_event(
                machine,
                C,
                state,
                cfg,
                wall,
                f"{machine} has calmed down: {state.held_count} alert event(s) during the flood were "
                "summarised; the current state of each alert follows",
            )
        ]
        for t in state.held:
            up = t.key in upstream
            if t.kind is C:
                if up:
                    out.append(t)
            else:
                out.append(replace(t, kind=U if up else R))
        raises = _recent(state.raises, now, cfg.flood_window, keep)
        return FloodState(raises=raises), out
    state = replace(state, produced=produced)
    due = state.noted_at is None or now - state.noted_at >= cfg.flood_window
    if state.held_count != state.reported and due:
        t = _flood_event(
            machine,
            U,
            state,
            cfg,
            wall,
            f"{machine} is still flooding: {_held_text(state)}; they are sent when it calms down",
        )
        return replace(state, reported=state.held_count, noted_at=now), [t]
    return state, []


def forgotten(machine: str, severity: Severity, wall: float) -> Transition:
    """The clear of a ``<machine>/flood`` alert left active by a previous run (a restart forgets floods)."""
    return Transition(
        machine=machine,
        rule=FLOOD,
        signal=None,
        kind=C,
        severity=severity,
        value=None,
        threshold=None,
        message=f"{machine}: the agent restarted; its alert changes are sent one by one again",
        time=wall,
        extra={"kind": FLOOD},
    )
