"""The outbox's part in routing: what each sink has seen, kept with its cursor, on a real file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import Severity, StoredEvent
from agent.pipeline.outbox import Outbox
from agent.sinks.routing import described


def ev(seq: int) -> StoredEvent:
    return StoredEvent(seq, f"e{seq}", Severity.WARNING, b'{"type": "andon.alert.raised"}')


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    ob = Outbox(path)
    ob.open()
    ob.set_sinks(["phones", "oncall"])
    yield ob
    ob.close()


def test_seen_changes_with_the_cursor_and_survives_reopen(outbox: Outbox, path: Path) -> None:
    outbox.append([ev(1), ev(2), ev(3)], {})
    outbox.settle("phones", 2, (), {"press-1/wear": True, "press-2/fault": True})
    outbox.settle("oncall", 1, (), {"press-1/wear": True})
    outbox.settle("phones", 3, (), {"press-2/fault": False, "press-9/never": False})
    assert (outbox.seen("phones"), outbox.seen("oncall")) == ({"press-1/wear"}, {"press-1/wear"})
    outbox.close()
    again = Outbox(path)
    again.open()
    try:
        assert again.seen("phones") == {"press-1/wear"}
        assert again.db.execute("SELECT sink, seq FROM cursors ORDER BY sink").fetchall() == [
            ("oncall", 1),
            ("phones", 3),
        ]
    finally:
        again.close()


def test_a_removed_sink_forgets_what_it_saw(outbox: Outbox) -> None:
    outbox.settle("oncall", 0, (), {"press-1/wear": True})
    outbox.set_sinks(["phones"])
    outbox.set_sinks(["phones", "oncall"])  # configured again later: a new sink, it saw nothing
    assert outbox.seen("oncall") == set()


def test_a_file_from_before_routing_gets_every_active_alert_as_seen(path: Path) -> None:
    """Before routing every sink got every event: after the upgrade each sink has seen each active
    alert, so their updates and clears still reach it (whatever its new min_severity)."""
    old = Outbox(path)
    old.open()
    old.set_sinks(["up", "fleet"])
    old.append([ev(1)], {"press-1/wear": {"severity": "warning"}, "lathe-2/offline": {"severity": "warning"}})
    old.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE sink_alerts")  # what a file written by the previous release looks like
    upgraded = Outbox(path)
    upgraded.open()
    try:
        assert upgraded.seen("up") == upgraded.seen("fleet") == {"press-1/wear", "lathe-2/offline"}
        upgraded.set_sinks(["up", "fleet", "phones"])
        assert upgraded.seen("phones") == set()  # a sink configured after the upgrade starts empty
    finally:
        upgraded.close()
    reopened = Outbox(path)  # the migration runs once
    reopened.open()
    try:
        reopened.settle("up", 1, (), {"press-1/wear": False})
        reopened.close()
        reopened.open()
        assert reopened.seen("up") == {"lathe-2/offline"}
    finally:
        reopened.close()


def alert_body(seq: int, kind: str, machine: str = "press-1") -> bytes:
    doc = {"type": f"andon.alert.{kind}", "subject": f"{machine}/wear", "data": {"machine": machine, "seq": seq}}
    return json.dumps(doc).encode()


def test_events_keep_what_routing_needs_in_columns(outbox: Outbox) -> None:
    """Routing never parses a body: the outbox stores type, subject and machine with each event,
    read from the body once when the writer did not give them."""
    given = StoredEvent(
        1, "e1", Severity.CRITICAL, alert_body(1, "raised"), "andon.alert.raised", "press-1/wear", "press-1"
    )
    bare = StoredEvent(2, "e2", Severity.WARNING, alert_body(2, "cleared", "lathe-2"))
    outbox.append([given, bare], {})
    first, second = outbox.pending("phones", 10)
    assert (first.type, first.subject, first.machine) == ("andon.alert.raised", "press-1/wear", "press-1")
    assert (second.type, second.subject, second.machine) == ("andon.alert.cleared", "lathe-2/wear", "lathe-2")
    assert described(second) is second  # nothing left to parse


def test_a_file_from_before_the_columns_gets_them_from_the_bodies(path: Path) -> None:
    with sqlite3.connect(path) as db:  # the events table of the previous release, two events waiting
        db.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, severity INTEGER NOT NULL, "
            "body BLOB NOT NULL)"
        )
        db.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?)", [(1, "e1", 3, alert_body(1, "raised")), (2, "e2", 2, b"junk")]
        )
    upgraded = Outbox(path)
    upgraded.open()
    try:
        upgraded.set_sinks(["up"])
        raised, junk = upgraded.pending("up", 10)
        assert (raised.type, raised.subject, raised.machine) == ("andon.alert.raised", "press-1/wear", "press-1")
        assert (junk.type, junk.body) == ("?", b"junk")  # not a CloudEvent: kept, taken by every-type sinks only
    finally:
        upgraded.close()
