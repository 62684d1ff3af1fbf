"""``/metrics`` serves exactly what the README's metrics table lists, and the status endpoints never
wait for the outbox's disk thread (their figures come from counters the outbox keeps in memory)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.demo.receiver import Receiver
from agent.model import Severity, StoredEvent
from agent.pipeline.outbox import Outbox
from drivers.modbus.sim import SimulatedMachine
from tests.waiting import of, running_agent

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(andon_[a-z_]+)` \| (gauge|counter|summary) \| ((?:`[a-z_]+`)?) *\| .+\|$")


def documented() -> dict[str, tuple[str, str]]:
    """The README's metrics table: name -> (type, label)."""
    rows = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if m := ROW.match(line):
            rows[m.group(1)] = (m.group(2), m.group(3).strip("`"))
    assert len(rows) >= 20, "the README's metrics table was not found (or lost its rows)"
    return rows


def family_name(name: str, kind: str) -> str:
    """The name the Prometheus parser gives a family (a counter's ``_total`` is its samples')."""
    return name.removesuffix("_total") if kind == "counter" else name


async def test_every_metric_the_readme_lists_is_served_and_nothing_else(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(machine.port, receiver.url, status={"listen": "127.0.0.1:0"})
    async with running_agent(cfg) as agent, httpx.AsyncClient() as http:
        await machine.set("holding", 10, [0b1000])
        await receiver.wait_for(lambda ev: of(ev, "m1/fault", "raised") != [])
        text = (await http.get(f"http://127.0.0.1:{agent.status_port}/metrics")).text
    served = {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("andon_")}
    docs = documented()
    expected = {family_name(name, kind): (name, kind, label) for name, (kind, label) in docs.items()}
    assert sorted(set(expected) - set(served)) == [], "documented, but not served"
    assert sorted(set(served) - set(expected)) == [], "served, but not in the README's table"
    for family, (name, kind, label) in expected.items():
        f = served[family]
        assert f.type == kind, name
        assert f.samples, f"{name}: no samples"
        assert {tuple(s.labels) for s in f.samples} == {(label,) if label else ()}, name
    values = {s.name: s.value for f in served.values() for s in f.samples if not s.labels}
    assert values["andon_outbox_disk_full"] == 0 and values["andon_outbox_write_errors_total"] == 0


async def test_health_and_metrics_answer_while_the_outbox_thread_is_busy(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    """A slow fsync on an SD card holds the outbox's thread for seconds: /healthz and /metrics (what
    a watchdog and a monitoring system poll) must still answer at once, and with the right figures."""
    cfg = make_config(machine.port, status={"listen": "127.0.0.1:0"})  # no sink: the event stays
    async with running_agent(cfg) as agent, httpx.AsyncClient(timeout=2.0) as http:
        base = f"http://127.0.0.1:{agent.status_port}"
        await machine.set("holding", 10, [0b1000])
        while not agent.alerts or not agent.alerts.active:
            await machine.wait_requests(1)
        assert agent.outbox is not None
        release = threading.Event()
        busy = asyncio.ensure_future(agent.outbox.call(release.wait, 10.0))  # the disk thread is stuck
        try:
            health = await http.get(f"{base}/healthz")
            metrics = (await http.get(f"{base}/metrics")).text
            status = (await http.get(f"{base}/status")).json()
        finally:
            release.set()
            await busy
    assert health.status_code == 200
    assert "andon_outbox_events 1.0" in metrics.splitlines()
    assert status["outbox"]["events"] == 1 and status["outbox"]["bytes"] > 0
    assert 0 <= status["outbox"]["oldest_event_age_seconds"] < 60


def body(seq: int, t: float) -> bytes:
    from agent.pipeline.alertlog import rfc3339

    return json.dumps({"id": f"id-{seq}", "time": rfc3339(t), "data": {"seq": seq}}).encode()


@pytest.mark.parametrize("seed", range(6))
def test_the_depths_kept_in_memory_match_the_file(tmp_path: Path, seed: int) -> None:
    """Commits, drops (a small bound), settles by two sinks, dead letters, a sink removed and added,
    a reopen: the per-sink depths and the oldest event's time kept in memory always equal what a
    COUNT(*) and a read of the file say."""
    rng = random.Random(seed)
    ob = Outbox(tmp_path / "outbox.db", max_events=100, max_bytes=10**9)
    ob.open()
    sinks = ["a", "b"]
    ob.set_sinks(sinks)
    times: dict[int, float] = {}

    def check() -> None:
        stats = ob.stats()
        assert stats.sink_depths == {s: ob.depth(s) for s in sinks}
        oldest = ob.db.execute("SELECT min(seq) FROM events").fetchone()[0]
        assert stats.oldest_time == (None if oldest is None else pytest.approx(times[oldest], abs=1e-3))

    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            severity = rng.choice(list(Severity))
            drafts = []
            for _ in range(rng.randint(1, 5)):

                def draft(seq: int, sev: Severity = severity) -> StoredEvent:
                    times[seq] = 1_800_000_000.0 + seq % 100_000 + rng.random()
                    return StoredEvent(seq, f"id-{seq}", sev, body(seq, times[seq]))

                drafts.append(draft)
            ob.emit(drafts, {})
        elif action < 0.9:
            sink = rng.choice(sinks)
            head = ob.pending(sink, rng.randint(1, 8))
            if head:
                rejected = [(head[0], "HTTP 400")] if rng.random() < 0.2 else []
                ob.settle(sink, head[-1].seq, rejected)
        elif action < 0.95:
            sinks = ["a"] if sinks == ["a", "b"] else ["a", "b"]
            ob.set_sinks(sinks)
        else:
            ob.close()
            ob.open()
            ob.set_sinks(sinks)
        check()
    ob.close()
