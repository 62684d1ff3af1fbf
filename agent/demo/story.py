"""The demo's story, as a pure function of the story's clock: what the press and the network do.

Two minutes (at ``--speed 1``), then it starts again with the new tool wearing in:

====  ============================================================================================
  0 s  tool 1 of press-1 is at 62 % and wears about 0.6 %/s: the forecast warns well before the
       limit, the threshold warns at 80 % and escalates to critical at 95 %
 12 s  the spindle faults for 6 s (a critical alert, raised and cleared)
 62 s  tool 1 is changed at 98 %: its alerts clear (and the tool change is an event of its own)
 70 s  the network to the upstream is cut for 20 s: events are committed and wait in the outbox
 75 s  the spindle faults again, while the network is down
 90 s  the network is back: the waiting events arrive, in order
 98 s  press-1 is unplugged: after ``offline_after`` its offline alert is raised
113 s  press-1 is plugged in again: the offline alert clears
120 s  again from the top (the new tool has worn to about 62 % by then)
====  ============================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

PERIOD = 120.0
START_WEAR = 62.0
CHANGE_AT, CHANGED_WEAR, CHANGE_WEAR = 62.0, 1.0, 98.0  # when the tool is changed, from what to what
FAULTS = ((12.0, 18.0), (75.0, 80.0))
NETWORK_DOWN = (70.0, 90.0)
UNPLUGGED = (98.0, 113.0)

ACTS = (
    (0.0, "tool 1 of press-1 wears out: the forecast warns long before the limit, then the threshold escalates"),
    (12.0, "the spindle of press-1 faults"),
    (CHANGE_AT, "tool 1 is changed: its alerts clear"),
    (NETWORK_DOWN[0], "the network to the upstream is cut for 20 s: events are committed and wait in the outbox"),
    (NETWORK_DOWN[1], "the network is back: the waiting events arrive, in order"),
    (UNPLUGGED[0], "press-1 is unplugged: watch for its offline alert"),
    (UNPLUGGED[1], "press-1 is plugged in again"),
)


@dataclass(frozen=True, slots=True)
class Scene:
    """The world at one moment of the story."""

    wear: float  # tool 1's wear, %
    fault: bool  # the spindle fault bit
    network_down: bool  # the upstream cannot be reached
    unplugged: bool  # the press does not answer
    tool_changes: int  # tool changes so far


def wear_at(c: float) -> float:
    """Tool 1's wear at cycle time ``c``: 62 % -> 98 % until the change, then 1 % -> 62 % by the cycle's end."""
    if c < CHANGE_AT:
        return START_WEAR + (CHANGE_WEAR - START_WEAR) * c / CHANGE_AT
    return CHANGED_WEAR + (START_WEAR - CHANGED_WEAR) * (c - CHANGE_AT) / (PERIOD - CHANGE_AT)


def scene(t: float) -> Scene:
    """The scene ``t`` story seconds after the start (the demo's ``--speed`` makes them run faster)."""
    cycle, c = divmod(max(t, 0.0), PERIOD)
    return Scene(
        wear=wear_at(c),
        fault=any(a <= c < b for a, b in FAULTS),
        network_down=NETWORK_DOWN[0] <= c < NETWORK_DOWN[1],
        unplugged=UNPLUGGED[0] <= c < UNPLUGGED[1],
        tool_changes=int(cycle) + (c >= CHANGE_AT),
    )


def acts_between(t0: float, t1: float) -> list[str]:
    """The acts that begin in the story time ``(t0, t1]`` (``t0 < 0`` includes the very first)."""
    out: list[str] = []
    first = int(max(t0, 0.0) // PERIOD)
    for cycle in range(first, int(max(t1, 0.0) // PERIOD) + 1):
        for at, text in ACTS:
            when = cycle * PERIOD + at
            if t0 < when <= t1:
                out.append(text)
    return out
