"""The outbox's part in routing: what each sink has seen, kept with its cursor, on a real file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.model import Severity, StoredEvent
from agent.pipeline.outbox import Outbox


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
