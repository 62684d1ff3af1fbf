"""Fault injection against a real SQLite file and a real HTTP receiver, the writer in a subprocess.

The writer (``tests/outbox_writer.py agent``) is the agent's real path: AlertLog -> AsyncOutbox
(SQLite, WAL, synchronous=FULL) -> Delivery -> HttpSink. The receiver runs in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.demo.receiver import Batch, Receiver, Reply
from agent.model import StoredEvent, Transition
from agent.pipeline.outbox import AsyncOutbox
from agent.pipeline.supervisor import Agent
from drivers.modbus.sim import SimulatedMachine
from tests.waiting import Changes, counting_factory, running_agent

ROOT = Path(__file__).resolve().parent.parent
KILLS_PER_CHAIN = 5
CHAINS = 4  # 4 x 5 = 20 SIGKILLs, each at a point chosen by its own seed
BATCH = 16


@dataclass
class Writer:
    """One run of the writer subprocess; ``committed`` holds the seqs it reported committed."""

    proc: asyncio.subprocess.Process
    start: int = 0
    committed: list[int] = field(default_factory=list)
    drained: dict[str, Any] | None = None

    @classmethod
    async def spawn(cls, path: Path, seed: int, url: str, *extra: str) -> Writer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.outbox_writer",
            "agent",
            str(path),
            str(seed),
            url,
            *extra,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        w = cls(proc)
        line = await w._line()
        assert line.startswith("start "), line
        w.start = int(line.split()[1])
        return w

    async def _line(self) -> str:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            err = (await self.proc.stderr.read()).decode()
            raise AssertionError(f"writer exited ({await self.proc.wait()}):\n{err}")
        return raw.decode().strip()

    async def read_until(self, committed: int) -> None:
        while len(self.committed) < committed:
            self.take(await self._line())

    def take(self, line: str) -> None:
        if line.startswith("c "):
            self.committed.append(int(line[2:]))
        elif line.startswith("drained "):
            self.drained = json.loads(line[len("drained ") :])

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.stdout is not None
        for raw in (await self.proc.stdout.read()).decode().splitlines():  # lines written before the kill
            self.take(raw.strip())
        assert await self.proc.wait() == -signal.SIGKILL

    async def finish(self, within: float = 60.0) -> None:
        async with asyncio.timeout(within):
            while self.drained is None:
                self.take(await self._line())
            assert await self.proc.wait() == 0


def outbox_rows(path: Path, table: str = "events") -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def damaged(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("outbox.db.damaged-*"))


def spoil(path: Path, damage: str) -> None:
    size = path.stat().st_size
    if damage == "garbage":
        path.write_bytes(random.Random(3).randbytes(size))
    elif damage == "truncated":
        with path.open("r+b") as f:
            f.truncate(size // 3)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a WAL that is not one: SQLite ignores frames whose checksums fail
        Path(f"{path}-wal").write_bytes(random.Random(4).randbytes(64 * 1024))


def check_cloudevent(e: dict[str, Any]) -> None:
    assert e["specversion"] == "1.0" and e["source"] == "/andon/gw-faults"
    assert e["type"].startswith("andon.") and e["id"] and e["time"].endswith("Z")
    assert isinstance(e["data"]["seq"], int)


# -- SIGKILL at random points during a burst ---------------------------------------------------


@pytest.mark.parametrize("chain", range(CHAINS))
async def test_sigkill_during_a_burst_loses_nothing_and_leaves_no_gap(tmp_path: Path, chain: int) -> None:
    rng = random.Random(1000 + chain)

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        roll = rng.random()  # a busy, slightly flaky upstream, so kills land mid-request too
        if roll < 0.05:
            return Reply(503)
        return Reply(200, delay=rng.choice([0.0, 0.0, 0.002, 0.01]))

    path = tmp_path / "outbox.db"
    runs: list[Writer] = []
    async with Receiver(respond) as r:
        for k in range(KILLS_PER_CHAIN):
            seed = chain * KILLS_PER_CHAIN + k
            w = await Writer.spawn(path, seed, r.url, "--batch", str(BATCH))
            if runs:  # seq keeps increasing across the crash
                assert w.start >= max(runs[-1].committed, default=runs[-1].start)
            kill_rng = random.Random(seed)
            if kill_rng.random() < 0.3:
                await asyncio.sleep(kill_rng.uniform(0, 0.05))  # a random moment, maybe before any commit
            else:
                await w.read_until(kill_rng.randint(1, 300))  # after a random number of commits
            await w.kill()
            runs.append(w)
        last = await Writer.spawn(path, 999, r.url, "--count", "0", "--batch", str(BATCH))
        await last.finish()
        assert last.start >= max(runs[-1].committed, default=runs[-1].start)

    committed = [s for w in runs for s in w.committed]
    assert committed == sorted(committed) and len(set(committed)) == len(committed)
    got = [e["data"]["seq"] for e in r.events]
    unique = sorted(set(got))
    assert set(committed) <= set(unique), "an event reported committed never arrived"
    first = runs[0].start + 1
    if unique:
        assert unique == list(range(first, unique[-1] + 1)), "a gap in seq"
        assert unique[-1] == last.start  # everything committed in the file arrived
    # First arrivals come in seq order; repeats are batches in flight at a kill, same id and body.
    assert list(dict.fromkeys(got)) == unique
    by_seq: dict[int, dict[str, Any]] = {}
    for e in r.events:
        check_cloudevent(e)
        assert by_seq.setdefault(e["data"]["seq"], e) == e
    repeats = sum(n - 1 for n in Counter(got).values())
    assert repeats <= KILLS_PER_CHAIN * BATCH
    assert outbox_rows(path) == 0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert damaged(tmp_path) == []


# -- a receiver that refuses, shrinks, defers or hangs -----------------------------------------


async def run_writer(url: str, tmp_path: Path, count: int, *extra: str) -> Writer:
    w = await Writer.spawn(tmp_path / "outbox.db", 7, url, "--count", str(count), *extra)
    await w.finish()
    assert len(w.committed) == count
    return w


def ns(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["n"] for e in events]


async def test_one_refused_event_is_set_aside_and_the_others_arrive(tmp_path: Path) -> None:
    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(400) if 17 in ns(batch) else Reply(200)

    async with Receiver(respond) as r:
        w = await run_writer(r.url, tmp_path, 60, "--batch", "8")
    assert ns(r.events) == [n for n in range(60) if n != 17]
    assert w.drained is not None and w.drained["delivery"]["rejected"] == 1
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        (row,) = db.execute("SELECT seq, reason, body FROM dead_letters").fetchall()
    assert row[1] == "HTTP 400" and json.loads(row[2])["data"]["n"] == 17


async def test_413_halves_the_batch_size_and_nothing_is_lost(tmp_path: Path) -> None:
    sizes: list[int] = []

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        sizes.append(len(batch))
        return Reply(413) if len(batch) > 5 else Reply(200)

    async with Receiver(respond) as r:
        w = await run_writer(r.url, tmp_path, 80, "--batch", "16", "--hold")
    assert ns(r.events) == list(range(80))  # each once, in order: a 413 sets nothing aside
    assert w.drained is not None
    assert w.drained["delivery"]["rejected"] == 0 and w.drained["outbox"]["dead_letters"] == 0
    assert w.drained["delivery"]["batch_size"] <= 8  # halved from 16 (and maybe grown back once)
    assert max(sizes) == 16 and sizes.count(16) <= 2  # once the size was halved, 16 came back rarely


async def test_503_with_retry_after_is_honoured(tmp_path: Path) -> None:
    times: list[float] = []

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        times.append(time.monotonic())
        return Reply(503, {"Retry-After": "1"}) if len(times) == 2 else Reply(200)

    async with Receiver(respond) as r:
        await run_writer(r.url, tmp_path, 30, "--batch", "8")
    assert ns(r.events) == list(range(30))
    assert times[2] - times[1] >= 0.9  # not the 0.2 s backoff cap


async def test_a_hanging_receiver_times_out_and_nothing_is_lost(tmp_path: Path) -> None:
    requests = 0

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        nonlocal requests
        requests += 1
        return Reply(200, delay=30) if requests in (2, 3) else Reply(200)  # hangs far beyond the timeout

    async with Receiver(respond) as r:
        started = time.monotonic()
        w = await run_writer(r.url, tmp_path, 40, "--batch", "8", "--timeout", "300ms")
        took = time.monotonic() - started
    assert sorted(set(ns(r.events))) == list(range(40))
    assert ns(r.events) == sorted(ns(r.events))  # the hung requests never "arrived"
    assert w.drained is not None and w.drained["delivery"]["failures"] >= 2
    assert took < 15


async def test_upstream_down_long_enough_to_fill_the_outbox_then_a_drop_notice(tmp_path: Path) -> None:
    up = {"ok": False}

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(200) if up["ok"] else Reply(503)

    async with Receiver(respond) as r:
        w = await Writer.spawn(tmp_path / "outbox.db", 11, r.url, "--count", "250", "--max-events", "100")
        await w.read_until(250)  # all committed while the upstream refuses: 150 were dropped
        up["ok"] = True
        await w.finish()
    notices = [e for e in r.events if e["type"] == "andon.outbox.dropped"]
    alerts = [e for e in r.events if e["type"] != "andon.outbox.dropped"]
    assert len(notices) == 1 and notices[0]["data"]["dropped"] == 150
    got = ns(alerts)
    # The 100 the full outbox kept (the critical ones and the newest), each once and in order, plus
    # perhaps the batch the delivery held (retrying) while its events were dropped.
    assert got == sorted(set(got)) and 100 <= len(got) <= 100 + 16 and got[-1] == 249
    assert notices[0]["data"]["seq"] == w.committed[-1] + 1 and notices[0]["subject"] == "gw-faults/outbox"
    assert w.committed[0] <= notices[0]["data"]["first_seq"] < notices[0]["data"]["last_seq"] < w.committed[-1]
    assert w.drained is not None and w.drained["outbox"]["dropped"] == 150
    assert w.drained["outbox"]["dropped_unreported"] == 0


# -- a damaged outbox at start -----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "garbage-wal", "empty"])
async def test_writer_starts_on_a_damaged_outbox(tmp_path: Path, damage: str, receiver: Receiver) -> None:
    path = tmp_path / "outbox.db"
    before = await run_writer(receiver.url, tmp_path, 200, "--batch", "50")  # a real file with some history
    receiver.events.clear()
    spoil(path, damage)
    w = await run_writer(receiver.url, tmp_path, 20)
    assert ns(receiver.events) == list(range(20))  # it runs and delivers
    aside = damaged(tmp_path)
    if damage in ("garbage", "truncated"):
        assert [p for p in aside if not p.endswith(("-wal", "-shm"))], "the damaged file was not kept"
    else:
        assert not aside  # nothing damaged in what was committed: the same file goes on
    assert w.committed[0] > before.committed[-1]  # seq keeps increasing, even on a fresh file


# -- a full disk, end to end: the real agent, a simulated machine, a real receiver ------------------


class Bump(logging.Handler):
    def __init__(self, changes: Changes) -> None:
        super().__init__()
        self.changes = changes
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.changes.bump()


async def test_full_disk_holds_transitions_back_and_resumes_without_a_gap(
    machine: SimulatedMachine, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    upstream = Receiver(port=unused_tcp_port)  # down while the disk is full: nothing is settled, nothing freed
    changes = Changes()
    committed: list[tuple[str, int]] = []
    reads: dict[str, int] = {}

    def observe(t: Transition, e: StoredEvent) -> None:
        committed.append((t.kind.value, e.seq))
        changes.bump()

    handler = Bump(changes)
    outbox_log = logging.getLogger("andon.outbox")
    outbox_log.addHandler(handler)
    level = outbox_log.level
    outbox_log.setLevel(logging.INFO)
    fault: dict[str, Any] = {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault", "chatter_count": 0}
    cfg = make_config(machine.port, upstream.url, rules=[fault], alerts={"flood_count": 0})
    agent = Agent(cfg, observers=[observe], driver_factory=counting_factory(reads, changes))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await changes.until(lambda: agent.started.is_set() and reads.get("m1", 0) > 0)
        ob = agent.outbox
        assert ob is not None

        def cap() -> None:  # what a full disk looks like to SQLite: no new page (SQLITE_FULL)
            pages = ob.sync.db.execute("PRAGMA page_count").fetchone()[0]
            ob.sync.db.execute(f"PRAGMA max_page_count={pages}")

        await ob.call(cap)
        bit = 0
        while not ob.sync.stats().disk_full:  # toggle until the events no longer fit in the file
            assert len(committed) < 40, "the capped file never filled up"
            bit ^= 1
            before = len(committed)
            await machine.set("holding", 10, [bit << 3])

            def settled(before: int = before) -> bool:
                return len(committed) > before or ob.sync.stats().disk_full

            await changes.until(settled)
        held = "raised" if bit else "cleared"  # the transition the disk refused
        assert not committed or committed[-1][0] != held
        errors = ob.sync.stats().write_errors
        await changes.until(lambda: ob.sync.stats().write_errors >= errors + 3)  # tried again on every poll
        assert sum("disk is full" in m for m in handler.messages) == 1  # said once
        assert agent.machines[0].status.reads > 0 and not task.done()  # the agent keeps running

        await ob.call(ob.sync.db.execute, "PRAGMA max_page_count=1073741823")  # space again
        await changes.until(lambda: bool(committed) and committed[-1][0] == held)
        assert any("writing again" in m for m in handler.messages)
        await upstream.start()
        await upstream.wait_for(lambda ev: len(ev) == len(committed), within=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await upstream.stop()
        outbox_log.removeHandler(handler)
        outbox_log.setLevel(level)
    kinds = [e["type"].rsplit(".", 1)[1] for e in upstream.events]
    assert kinds == ["raised", "cleared"] * (len(kinds) // 2) + ["raised"] * (len(kinds) % 2)  # none lost
    seqs = [e["data"]["seq"] for e in upstream.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap: the refused commit took no seq
    assert kinds[-1] == held


async def test_the_agent_starts_on_a_garbage_outbox_and_says_so(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver
) -> None:
    from tests.agent_process import AgentProcess, write_config

    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(random.Random(8).randbytes(50_000))
    agent = AgentProcess(write_config(tmp_path / "agent.toml", state, machine.port, receiver.url))
    await agent.start()
    await agent.wait_line("OUTBOX DAMAGED")
    await agent.wait_line("started")
    await machine.set("holding", 10, [0b1000])
    await receiver.wait_for(lambda ev: any(e["subject"] == "m1/fault" for e in ev))
    assert await agent.signal(signal.SIGTERM) == 0
    assert [p.name for p in state.glob("outbox.db.damaged-*")]


# -- a full disk and the agent's own alerts (issue 12, defect 7) ----------------------------------


@contextlib.contextmanager
def watching(logger: str, changes: Changes) -> Iterator[Bump]:
    """Every record of ``logger`` (DEBUG too) bumps ``changes``: a failed commit logs, so it can be awaited."""
    handler = Bump(changes)
    target = logging.getLogger(logger)
    level = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        target.setLevel(level)


async def test_an_offline_alert_the_full_disk_refused_is_raised_once_there_is_space(
    make_config: Callable[..., Config], receiver: Receiver
) -> None:
    machine = SimulatedMachine()
    await machine.start()
    changes = Changes()
    reads: dict[str, int] = {}
    cfg = make_config(machine.port, receiver.url, rules=[])
    agent = Agent(cfg, driver_factory=counting_factory(reads, changes))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        with watching("andon.runtime", changes) as runtime:
            await changes.until(lambda: agent.started.is_set() and reads.get("m1", 0) > 0)
            ob = agent.outbox
            assert ob is not None
            await ob.call(ob.sync.db.execute, "PRAGMA query_only = ON")  # the disk refuses every write
            await machine.stop()  # the machine goes away: after offline_after its alert is due

            def refused(times: int) -> Callable[[], bool]:
                return lambda: (
                    sum("offline alert is held back" in m or "still failing" in m for m in runtime.messages) >= times
                )

            await changes.until(refused(3), within=10)  # tried again, not once and then forgotten
            assert not task.done() and not agent.machines[0].status.offline
            await ob.call(ob.sync.db.execute, "PRAGMA query_only = OFF")  # space again
            await receiver.wait_for(lambda got: [e["subject"] for e in got] == ["m1/offline"], within=5)
            assert receiver.events[0]["type"] == "andon.alert.raised"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


class DiskFullAtStart(Agent):
    """The agent on a disk that is full from its start: after the outbox is opened and read, no write
    goes through (SQLite's query_only, as a full disk refuses), until ``space()`` is called."""

    def _make_outbox(self, cfg: Config) -> AsyncOutbox:
        ob = super()._make_outbox(cfg)
        opened = ob.sync.open

        def open_full() -> None:
            opened()
            ob.sync.db.execute("PRAGMA query_only = ON")

        ob.sync.open = open_full  # type: ignore[method-assign]
        return ob

    async def space(self) -> None:
        assert self.outbox is not None
        await self.outbox.call(self.outbox.sync.db.execute, "PRAGMA query_only = OFF")


async def test_a_full_disk_and_an_alert_whose_rule_was_removed_do_not_stop_the_agent(
    machine: SimulatedMachine, make_config: Callable[..., Config], receiver: Receiver
) -> None:
    fault: dict[str, Any] = {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault"}
    changes = Changes()
    first = make_config(machine.port, receiver.url, rules=[fault])
    async with running_agent(first, changes=changes) as agent:
        await machine.set("holding", 10, [0b1000])
        await changes.until(lambda: agent.alerts is not None and "m1/fault" in agent.alerts.active)
    await machine.set("holding", 10, [0])
    await receiver.wait_for(lambda got: [e["subject"] for e in got] == ["m1/fault"])

    second = make_config(machine.port, receiver.url, rules=[])  # the rule is gone: its alert must clear
    full = DiskFullAtStart(second)
    stop = asyncio.Event()
    task = asyncio.create_task(full.run(stop))
    try:
        with watching("andon.runtime", changes) as runtime:
            await changes.until(lambda: full.started.is_set() or task.done(), within=10)
            assert not task.done(), task.exception()  # no crash loop: it runs
            assert full.alerts is not None and "m1/fault" in full.alerts.active  # not cleared: the disk said no
            await changes.until(lambda: sum("no longer in the configuration" in m for m in runtime.messages) >= 2)
            await full.space()
            await receiver.wait_for(lambda got: len(got) == 2, within=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    cleared = receiver.events[1]
    assert (cleared["subject"], cleared["type"]) == ("m1/fault", "andon.alert.cleared")
    assert cleared["data"]["seq"] == receiver.events[0]["data"]["seq"] + 1
