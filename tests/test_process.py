"""The agent as a real process: SIGKILL while events are pending loses nothing; SIGTERM stops cleanly."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.demo.receiver import Receiver
from drivers.modbus.sim import SimulatedMachine
from tests.agent_process import AgentProcess, write_config


@pytest.fixture
async def upstream(unused_tcp_port: int) -> AsyncIterator[Receiver]:
    r = Receiver(port=unused_tcp_port)  # not listening until a test starts it
    yield r
    await r.stop()


def pending_ids(state: Path) -> list[str]:
    with sqlite3.connect(state / "outbox.db") as db:
        return [row[0] for row in db.execute("SELECT id FROM events ORDER BY seq")]


async def test_sigkill_with_pending_events_loses_nothing(
    tmp_path: Path, machine: SimulatedMachine, upstream: Receiver
) -> None:
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "agent.toml", state, machine.port, upstream.url)
    agent = AgentProcess(cfg)
    await agent.start()
    await agent.wait_line("started")
    await machine.set("holding", 0, [850])
    await agent.wait_line("raised m1/wear")
    await machine.set("holding", 0, [960])
    await agent.wait_line("updated m1/wear")
    await machine.set("holding", 10, [0b1000])
    await agent.wait_line("raised m1/fault")
    assert await agent.signal(signal.SIGKILL) == -signal.SIGKILL

    before = pending_ids(state)
    assert len(before) == 3  # the upstream was down: all three wait on disk

    await upstream.start()
    again = AgentProcess(cfg)
    await again.start()
    await upstream.wait_for(lambda ev: len(ev) >= 3)
    await machine.wait_requests(5)  # the restarted agent has polled the still-active alerts
    await machine.set("holding", 0, [100])
    await upstream.wait_for(lambda ev: any(e["type"] == "andon.alert.cleared" for e in ev))
    assert await again.signal(signal.SIGTERM) == 0

    got = [(e["id"], e["type"], e["subject"]) for e in upstream.events]
    assert [g[0] for g in got[:3]] == before  # same ids, in seq order
    assert [g[1:] for g in got] == [
        ("andon.alert.raised", "m1/wear"),
        ("andon.alert.updated", "m1/wear"),
        ("andon.alert.raised", "m1/fault"),
        ("andon.alert.cleared", "m1/wear"),  # and no second raise of the still-active alerts
    ]
    seqs = [e["data"]["seq"] for e in upstream.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert pending_ids(state) == []


async def test_sigterm_stops_cleanly_after_a_last_delivery(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver
) -> None:
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "state", machine.port, receiver.url)
    agent = AgentProcess(cfg)
    await agent.start()
    await agent.wait_line("started")
    await machine.set("holding", 10, [0b1000])
    await agent.wait_line("raised m1/fault")
    assert await agent.signal(signal.SIGTERM) == 0
    assert any("stopped" in line for line in agent.lines)
    assert [json.dumps(e["subject"]) for e in receiver.events] == ['"m1/fault"']
