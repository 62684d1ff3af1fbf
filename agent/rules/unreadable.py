"""Blind rules: a signal that a rule watches and that stays unreadable raises ``<machine>/unreadable``.

A machine can answer while some of its signals cannot be read: the device refuses an address
(Modbus illegal data address), an OPC UA node has a Bad status (a broken sensor, a node the server
no longer has). The machine is not offline, so its ``offline`` alert says nothing, and a fault rule
on such a signal would stay silent for good. This alert makes that visible: raised when a watched
signal has read bad for ``offline_after`` while the machine is online, updated when the set of such
signals or their reasons change, cleared when every watched signal reads good again (or is no
longer watched): while one reads bad, even for less than ``offline_after``, the alert is held, so a
restart does not clear it before the signals had time to read again. Its message names the
machine, the signals, why, and the rules gone blind.

One alert per machine (not per signal): a PLC program change can make dozens of addresses
unreadable at once, and that is one problem to fix, not dozens of notifications. The key
``<machine>/unreadable`` is safe as a subject and an MQTT topic level; ``unreadable`` is a reserved
rule id. Pure: :func:`observe` takes one batch of samples, :func:`judge` lets time pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from agent.model import Quality, Sample, Severity, Transition, TransitionKind

UNREADABLE = "unreadable"  # the rule id of the "<machine>/unreadable" alert


@dataclass(frozen=True, slots=True)
class BlindState:
    """Watched signals that read bad now: since when (monotonic) and why; and the active alert's message."""

    since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    why: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    sent: str | None = None  # the message of the active alert (None: not active)


def observe(
    state: BlindState, samples: Iterable[Sample], watched: Mapping[str, Sequence[str]], now: float
) -> BlindState:
    """Take one batch of samples (a poll, or a subscription's changes): watched signals that read bad
    start (or keep) their clock, those that read good leave. ``watched`` maps a signal to its rules."""
    since, why = dict(state.since), dict(state.why)
    changed = False
    for s in samples:
        if s.signal not in watched:
            continue
        if s.quality is Quality.GOOD:
            changed |= since.pop(s.signal, None) is not None
            why.pop(s.signal, None)
        else:
            if s.signal not in since:
                since[s.signal] = now
                changed = True
            reason = s.error or "bad quality"
            changed |= why.get(s.signal) != reason
            why[s.signal] = reason
    if not changed:
        return state
    return replace(state, since=MappingProxyType(since), why=MappingProxyType(why))


def message(machine: str, why: Mapping[str, str], watched: Mapping[str, Sequence[str]], after: float) -> str:
    """The alert's one line: what cannot be read, why, and which rules cannot see."""
    signals = sorted(why)
    rules = sorted({r for s in signals for r in watched.get(s, ())})
    listed = "; ".join(f"{s}: {why[s]}" for s in signals)
    return (
        f"{machine}: {len(signals)} watched signal(s) unreadable for {after:g}s or more ({listed}); "
        f"rule(s) {', '.join(rules)} cannot see them: check the signal's address or node against the PLC program"
    )


def judge(
    state: BlindState,
    *,
    machine: str,
    watched: Mapping[str, Sequence[str]],
    now: float,
    wall: float,
    after: float,
    severity: Severity,
) -> tuple[BlindState, list[Transition]]:
    """The alert's transition now, if any. Call it only while the machine is online (offline, its own
    alert says why nothing can be read). ``after``: how long a signal must stay unreadable."""
    overdue = {s: state.why[s] for s, t in state.since.items() if now - t >= after and s in watched}
    if overdue:
        text = message(machine, overdue, watched, after)
        if text == state.sent:
            return state, []
        kind = TransitionKind.RAISED if state.sent is None else TransitionKind.UPDATED
    elif state.sent is not None and not state.since:  # held while a watched signal reads bad at all
        text, kind = f"{machine}: every watched signal is readable again", TransitionKind.CLEARED
    else:
        return state, []
    first = min(overdue) if overdue else None
    t = Transition(
        machine=machine,
        rule=UNREADABLE,
        signal=first,
        kind=kind,
        severity=severity,
        value=None,
        threshold=after,
        message=text,
        time=wall,
        extra={"signals": [{"signal": s, "error": overdue[s]} for s in sorted(overdue)]},
    )
    return replace(state, sent=None if kind is TransitionKind.CLEARED else text), [t]
