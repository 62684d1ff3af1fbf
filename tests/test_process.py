"""The agent as a real process: SIGKILL while events are pending loses nothing; SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.demo.receiver import Batch, Receiver, Reply
from drivers.modbus.sim import SimulatedMachine
from tests.agent_process import ROOT, AgentProcess, write_config


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


def stop_timeouts() -> tuple[float, float]:
    """systemd's TimeoutStopSec from the unit, and Docker's default stop timeout (docker stop -t)."""
    unit = (ROOT / "systemd/andon-agent.service").read_text()
    [systemd] = re.findall(r"^TimeoutStopSec=(\d+)s$", unit, re.M)
    return float(systemd), 10.0


async def test_sigterm_with_three_hanging_upstreams_stops_in_time_and_loses_nothing(
    tmp_path: Path, machine: SimulatedMachine
) -> None:
    """Each sink has a request in flight that never gets an answer when SIGTERM comes: the stop must
    still end within Docker's 10 s (and systemd's TimeoutStopSec), before either kills the agent, and
    every event must still be in the outbox for the next start, which delivers them."""
    hang = asyncio.Event()  # never set while the agent runs

    async def hanging(batch: Batch, headers: dict[str, str]) -> Reply:
        await hang.wait()
        return Reply(503)

    ups = [Receiver(hanging) for _ in range(3)]
    for up in ups:
        await up.start()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "state", machine.port, ups[0].url)
    sinks = "".join(
        f'\n[[sinks]]\nid = "up{i}"\nkind = "http"\nurl = "{up.url}"\ntimeout = "60s"\n' for i, up in enumerate(ups)
    )
    cfg.write_text(cfg.read_text().split("[[sinks]]")[0] + sinks)
    agent = AgentProcess(cfg)
    try:
        await agent.start()
        await agent.wait_line("started")
        await machine.set("holding", 10, [0b1000])
        await agent.wait_line("raised m1/fault")
        async with asyncio.timeout(10):
            while not all(up.requests for up in ups):  # every sink's request is in flight, and hangs
                await machine.wait_requests(1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await agent.signal(signal.SIGTERM) == 0
        took = loop.time() - t0
    finally:
        if agent.proc is not None and agent.proc.returncode is None:
            agent.proc.kill()
            await agent.proc.wait()
        for up in ups:
            await up.stop()
    assert took < min(stop_timeouts()), "".join(agent.lines)
    assert len(pending_ids(tmp_path / "state")) == 1  # the fault's raise waits in the outbox

    hang.set()
    async with contextlib.AsyncExitStack() as stack:
        ups = [await stack.enter_async_context(Receiver(port=up.port)) for up in ups]
        again = AgentProcess(cfg)
        await again.start()
        for up in ups:
            await up.wait_for(lambda ev: [e["subject"] for e in ev] == ["m1/fault"])
        assert await again.signal(signal.SIGTERM) == 0
    assert pending_ids(tmp_path / "state") == []
