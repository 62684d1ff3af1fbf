"""Routing (agent.sinks.routing): tables for each rule, and properties over any alert's lifecycle."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Severity, StoredEvent
from agent.sinks.routing import (
    ACKNOWLEDGED,
    CLEARED,
    RAISED,
    TEST,
    UPDATED,
    Route,
    Send,
    apply_changes,
    described,
    plan,
    present,
    route,
    seen_changes,
)

INFO, W, C = Severity.INFO, Severity.WARNING, Severity.CRITICAL
KEY = "press-1/tool1-wear"


def event(seq: int, type_: str, severity: Severity = W, *, subject: str | None = KEY, **data: Any) -> StoredEvent:
    """A described event as the outbox hands it to delivery, with a CloudEvent body to match."""
    machine = data.pop("machine", subject.split("/")[0] if subject and type_.startswith("andon.alert.") else None)
    body = {
        "specversion": "1.0",
        "id": f"id-{seq}",
        "type": type_,
        "subject": subject,
        "data": {"machine": machine, "severity": severity.label, "seq": seq, **data},
    }
    raw = json.dumps(body).encode()
    return StoredEvent(seq, f"id-{seq}", severity, raw, type_, subject, machine)


def sent(r: Route, events: list[StoredEvent], seen: frozenset[str] = frozenset()) -> list[tuple[int, str]]:
    return [(s.event.seq, s.type) for s in plan(r, events, seen).sends]


# -- the lifecycle rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_severity", "events", "expected"),
    [
        pytest.param(INFO, [(RAISED, W), (CLEARED, W)], [(1, RAISED), (2, CLEARED)], id="info sink: all as is"),
        pytest.param(C, [(RAISED, W), (CLEARED, W)], [], id="warning-only alert: nothing to a critical sink"),
        pytest.param(
            C,
            [(RAISED, W), (UPDATED, C), (CLEARED, C)],
            [(2, RAISED), (3, CLEARED)],
            id="warning then critical: raised from the update, then cleared",
        ),
        pytest.param(
            C,
            [(RAISED, W), (UPDATED, C), (UPDATED, W), (CLEARED, W)],
            [(2, RAISED), (3, UPDATED), (4, CLEARED)],
            id="seen: a later update below the level still goes, and the clear whatever its severity",
        ),
        pytest.param(
            W,
            [(RAISED, C), (UPDATED, W), (CLEARED, W)],
            [(1, RAISED), (2, UPDATED), (3, CLEARED)],
            id="raised at the level",
        ),
        pytest.param(W, [(RAISED, INFO), (UPDATED, INFO), (CLEARED, INFO)], [], id="info alert, warning sink"),
        pytest.param(
            C,
            [(RAISED, C), (CLEARED, C), (RAISED, W), (CLEARED, W), (RAISED, W), (UPDATED, C)],
            [(1, RAISED), (2, CLEARED), (6, RAISED)],
            id="each lifecycle on its own",
        ),
        pytest.param(
            W,
            [(RAISED, INFO), (ACKNOWLEDGED, INFO), (UPDATED, W), (ACKNOWLEDGED, W), (CLEARED, W)],
            [(3, RAISED), (4, ACKNOWLEDGED), (5, CLEARED)],
            id="acknowledged only once the sink saw the alert",
        ),
    ],
)
def test_lifecycle_table(
    min_severity: Severity, events: list[tuple[str, Severity]], expected: list[tuple[int, str]]
) -> None:
    batch = [event(i, t, s) for i, (t, s) in enumerate(events, 1)]
    assert sent(Route("s", min_severity), batch) == expected


def test_a_seen_alert_continues_from_the_stored_seen_set() -> None:
    r = Route("s", C)
    assert sent(r, [event(7, UPDATED, W), event(8, CLEARED, W)], frozenset({KEY})) == [(7, UPDATED), (8, CLEARED)]
    assert sent(r, [event(7, UPDATED, W), event(8, CLEARED, W)]) == []


def test_at_info_a_clear_follows_a_raise_the_sink_did_not_see() -> None:
    """Every alert reaches "info" when raised: at that level its cleared follows even when the raise
    came before the sink was configured or a full outbox dropped it; at other levels it cannot tell."""
    assert sent(Route("s"), [event(8, CLEARED, C)]) == [(8, CLEARED)]
    assert sent(Route("s", W), [event(8, CLEARED, C)]) == []
    assert sent(Route("s", machines=frozenset({"press-2"})), [event(8, CLEARED, C)]) == []
    assert sent(Route("s"), [event(7, ACKNOWLEDGED, C)]) == []


def test_a_raised_of_a_seen_alert_goes_as_raised() -> None:
    """A source that lost a cleared (dropped by a full outbox): the sink gets the new raise."""
    assert route(Route("s", C), event(1, RAISED, W), seen=True) == (RAISED, True)


# -- machines ----------------------------------------------------------------------------------


def test_machines_filter_alerts_that_open() -> None:
    r = Route("s", machines=frozenset({"press-2"}))
    assert sent(r, [event(1, RAISED, C), event(2, CLEARED, C)]) == []
    other = "press-2/fault"
    assert sent(r, [event(3, RAISED, C, subject=other), event(4, CLEARED, C, subject=other)]) == [
        (3, RAISED),
        (4, CLEARED),
    ]


def test_machines_do_not_cut_a_seen_alert_short() -> None:
    """A reload that drops a machine from a sink's list still lets the sink see its open alerts clear."""
    r = Route("s", machines=frozenset({"press-2"}))
    assert sent(r, [event(1, UPDATED, C), event(2, CLEARED, C)], frozenset({KEY})) == [(1, UPDATED), (2, CLEARED)]


# -- other event types -------------------------------------------------------------------------

DROPPED = "andon.outbox.dropped"
TOOL_CHANGED = "andon.tool.changed"
SUMMARY = "andon.usage.summary"


@pytest.mark.parametrize(
    ("r", "e", "expected"),
    [
        pytest.param(Route("s", C), event(1, DROPPED, W, subject="gw/outbox"), DROPPED, id="dropped: no min_severity"),
        pytest.param(
            Route("s", alerts_only=True), event(1, DROPPED, C, subject="gw/outbox"), None, id="dropped: not for ntfy"
        ),
        pytest.param(
            Route("s", C), event(1, TOOL_CHANGED, INFO, machine="press-1"), TOOL_CHANGED, id="usage: no min_severity"
        ),
        pytest.param(
            Route("s", machines=frozenset({"press-2"})),
            event(1, SUMMARY, INFO, subject="press-1", machine="press-1"),
            None,
            id="usage: machines apply",
        ),
        pytest.param(
            Route("s", machines=frozenset({"press-2"})),
            event(1, SUMMARY, INFO, subject="press-2", machine="press-2"),
            SUMMARY,
            id="usage: listed machine",
        ),
        pytest.param(
            Route("s", alerts_only=True), event(1, TOOL_CHANGED, INFO, machine="press-1"), None, id="usage: not for pd"
        ),
        pytest.param(
            Route("s", C, frozenset({"x"}), alerts_only=True),
            event(1, TEST, INFO, subject="_gateway/test"),
            TEST,
            id="test: every sink",
        ),
        pytest.param(
            Route("phones", alerts_only=True),
            event(1, TEST, INFO, subject="_gateway/test", sinks=["phones"]),
            TEST,
            id="test: the named sink",
        ),
        pytest.param(
            Route("oncall", alerts_only=True),
            event(1, TEST, INFO, subject="_gateway/test", sinks=["phones"]),
            None,
            id="test: not another sink",
        ),
    ],
)
def test_other_types(r: Route, e: StoredEvent, expected: str | None) -> None:
    assert route(r, e, seen=False).type == expected


def test_unknown_alert_types_follow_the_lifecycle() -> None:
    shelved = "andon.alert.shelved"
    assert route(Route("s"), event(1, shelved), seen=False) == (None, False)
    assert route(Route("s"), event(1, shelved), seen=True) == (shelved, True)


def test_describe() -> None:
    r = Route("phones", W, frozenset({"press-2", "press-1"}), alerts_only=True)
    assert r.describe() == "min_severity warning; machines: press-1, press-2; takes andon.alert.* and andon.test"
    assert Route("up").describe() == "min_severity info; machines: all; takes every event type"


# -- presentation and bookkeeping --------------------------------------------------------------


def test_present_changes_only_the_type() -> None:
    e = event(5, UPDATED, C)
    shown = present(e, RAISED)
    body, original = json.loads(shown.body), json.loads(e.body)
    assert (shown.seq, shown.id, shown.type, shown.subject) == (5, "id-5", RAISED, KEY)
    assert body["type"] == RAISED and body["id"] == original["id"] == "id-5"
    assert {k: v for k, v in body.items() if k != "type"} == {k: v for k, v in original.items() if k != "type"}
    assert present(e, UPDATED) is e


def test_described_reads_the_body_once() -> None:
    full = event(3, UPDATED, C)
    bare = StoredEvent(full.seq, full.id, full.severity, full.body)
    assert described(bare) == full
    assert described(full) is full
    assert described(StoredEvent(1, "x", INFO, b"not json")).type == "?"
    assert described(StoredEvent(1, "x", INFO, b'{"type": "andon.x", "data": 3}')).machine is None


def test_seen_changes_and_apply() -> None:
    sends = [Send(event(1, RAISED), RAISED), Send(event(2, CLEARED, subject="a/b"), CLEARED)]
    changes = seen_changes(sends)
    assert changes == {KEY: True, "a/b": False}
    assert apply_changes({"a/b", "c/d"}, changes) == {KEY, "c/d"}
    assert seen_changes([Send(event(1, UPDATED), UPDATED), Send(event(2, TEST, subject="_gateway/test"), TEST)]) == {}


# -- properties --------------------------------------------------------------------------------

severities = st.sampled_from([INFO, W, C])


@st.composite
def lifecycles(draw: st.DrawFn) -> list[tuple[str, Severity]]:
    """One alert's events as the alert log writes them: (raised, (updated | acknowledged)*, cleared?)+."""
    out: list[tuple[str, Severity]] = []
    count = draw(st.integers(1, 4))
    for n in range(count):
        out.append((RAISED, draw(severities)))
        for _ in range(draw(st.integers(0, 4))):
            out.append((draw(st.sampled_from([UPDATED, UPDATED, ACKNOWLEDGED])), draw(severities)))
        if n < count - 1 or draw(st.booleans()):
            out.append((CLEARED, draw(severities)))
    return out


def routed_in_batches(r: Route, events: list[StoredEvent], cuts: list[int]) -> list[Send]:
    """Plan batch after batch, carrying the seen set over as delivery persists it at each settle."""
    seen: set[str] = set()
    sends: list[Send] = []
    bounds = [0, *sorted(c % (len(events) + 1) for c in cuts), len(events)]
    for lo, hi in itertools.pairwise(bounds):
        p = plan(r, events[lo:hi], seen)
        sends += p.sends
        seen = apply_changes(seen, seen_changes(p.sends))
    return sends


@settings(max_examples=250, deadline=None)
@given(
    source=lifecycles(),
    min_severity=severities,
    listed=st.booleans(),
    cuts=st.lists(st.integers(0, 40), max_size=4),
)
def test_any_lifecycle_reaches_the_sink_well_formed(
    source: list[tuple[str, Severity]], min_severity: Severity, listed: bool, cuts: list[int]
) -> None:
    r = Route("s", min_severity, None if listed else frozenset({"other"}))
    events = [event(i, t, s) for i, (t, s) in enumerate(source, 1)]
    sends = routed_in_batches(r, events, cuts)
    assert sends == plan(r, events, set()).sends  # batching changes nothing

    # What the lifecycle rule says the sink gets: per lifecycle, from its first raised/updated at
    # or above the level (as raised), everything up to and including its cleared; else nothing.
    expected: list[tuple[int, str]] = []
    reached = False
    for e in events:
        if e.type == RAISED:
            reached = False
        if not reached and listed and e.type in (RAISED, UPDATED) and e.severity >= min_severity:
            reached = True
            expected.append((e.seq, RAISED))
        elif reached:
            expected.append((e.seq, e.type))
    assert [(s.event.seq, s.type) for s in sends] == expected

    # Well formed: raised first, never an update, acknowledgement or clear of an alert not raised.
    is_open = False
    for s in sends:
        assert s.type == RAISED or is_open, sends
        is_open = s.type != CLEARED
        assert (s.event.id, s.event.seq) == (f"id-{s.event.seq}", s.event.seq)
    # Ends with cleared when the alert cleared at or after reaching the level; open while it is active.
    start = max(i for i, (t, _) in enumerate(source) if t == RAISED)
    last = source[start:]
    last_reached = listed and any(t in (RAISED, UPDATED) and s >= min_severity for t, s in last)
    assert is_open == (last_reached and last[-1][0] != CLEARED)
    if last_reached and last[-1][0] == CLEARED:
        assert sends[-1] == (events[-1], CLEARED)


@settings(max_examples=200, deadline=None)
@given(
    source=st.lists(st.tuples(st.sampled_from([RAISED, UPDATED, CLEARED, ACKNOWLEDGED]), severities), max_size=20),
    min_severity=severities,
    seen_before=st.booleans(),
)
def test_even_a_broken_source_never_gives_an_update_without_a_raise(
    source: list[tuple[str, Severity]], min_severity: Severity, seen_before: bool
) -> None:
    """Whatever the outbox holds (a full outbox drops events), the sink never gets an update or an
    acknowledgement of an alert it was not sent a raise of; nor a clear, but at level info."""
    events = [event(i, t, s) for i, (t, s) in enumerate(source, 1)]
    is_open = seen_before
    for s in plan(Route("s", min_severity), events, {KEY} if seen_before else set()).sends:
        assert s.type == RAISED or is_open or (s.type == CLEARED and min_severity is INFO)
        is_open = s.type != CLEARED
