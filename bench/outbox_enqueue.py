"""Durable enqueue rate of the outbox: events per second, each committed and synced before it counts.

What it measures: the real :class:`Outbox` (SQLite, WAL, ``synchronous=FULL``) on a file in
``--state-dir``. An event counts once ``append`` has returned, i.e. once its transaction is
committed and fsync'd. Three ways of enqueueing, one after the other, each on a fresh file:

* ``single``: one event per commit, with its alert state (what one alert transition costs);
* ``alertlog``: the agent's real path for single transitions: ``AlertLog.commit`` (CloudEvent
  JSON, uuid, alert state) through ``AsyncOutbox``'s worker thread, awaited from the event loop;
* ``batch N``: N events per commit (what a poll that trips many rules at once, or a burst, costs).

Bodies are real CloudEvents of about 600 bytes. It prints events/s and the commit latency (median,
p99) for each. Run it on the gateway's real storage: fsync time is the whole story.

    .venv/bin/python bench/outbox_enqueue.py
    .venv/bin/python bench/outbox_enqueue.py --events 5000 --batches 10,100,1000 --state-dir /var/lib/andon-bench
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.alertlog import AlertLog, cloudevent
from agent.pipeline.outbox import AsyncOutbox, Outbox


def transition(n: int) -> Transition:
    return Transition(
        machine="press-1",
        rule=f"tool{n % 8}-wear",
        signal=f"tool{n % 8}_wear",
        kind=TransitionKind.RAISED if n % 2 == 0 else TransitionKind.CLEARED,
        severity=Severity.WARNING,
        value=81.5,
        threshold=80.0,
        message=f"tool{n % 8}_wear on press-1 is 81.5%, at or over the warning limit 80%: plan service soon",
        time=time.time(),
    )


def stored(seq: int) -> StoredEvent:
    body = cloudevent(transition(seq), seq=seq, event_id=f"{seq:036d}", gateway="gw-bench", site="plant-a")
    return StoredEvent(seq, body["id"], Severity.WARNING, json.dumps(body, separators=(",", ":")).encode())


def report(name: str, events: int, seconds: float, latencies: list[float]) -> None:
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"{name:<14} {events:>7} events in {seconds:6.2f} s = {events / seconds:>9,.0f} events/s   "
        f"commit median {statistics.median(lat) * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  ({len(lat)} commits)"
    )


def run_sync(state: Path, name: str, total: int, per_commit: int) -> None:
    ob = Outbox(state / f"{name}.db", max_events=10**7, max_bytes=2**40)
    ob.open()
    ob.set_sinks(["up"])
    seq = ob.last_seq()
    batches = [[stored(seq + i * per_commit + k + 1) for k in range(per_commit)] for i in range(total // per_commit)]
    latencies: list[float] = []
    started = time.perf_counter()
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        ob.append(batch, {f"press-1/tool{i % 8}-wear": {"n": i}})
        latencies.append(time.perf_counter() - t0)
    took = time.perf_counter() - started
    ob.close()
    report(name, per_commit * len(batches), took, latencies)


async def run_alertlog(state: Path, total: int) -> None:
    async with AsyncOutbox(Outbox(state / "alertlog.db", max_events=10**7, max_bytes=2**40)) as ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        log = AlertLog(ob, gateway="gw-bench", site="plant-a")
        await log.load()
        latencies: list[float] = []
        started = time.perf_counter()
        for n in range(total):
            t0 = time.perf_counter()
            await log.commit([transition(n)])
            latencies.append(time.perf_counter() - t0)
        took = time.perf_counter() - started
    report("alertlog", total, took, latencies)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2000, help="events per single-commit run (2000)")
    p.add_argument("--batches", default="10,100,500", help="batch sizes for the batched runs (10,100,500)")
    p.add_argument("--batch-events", type=int, default=50_000, help="events per batched run (50000)")
    p.add_argument("--state-dir", type=Path, default=None, help="where the files go (default: a temp dir in /tmp)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="andon-enqueue-", dir=args.state_dir) as tmp:
        state = Path(tmp)
        print(f"outbox files in {state} (SQLite WAL, synchronous=FULL: every commit is fsync'd)")
        runs: list[Callable[[], None]] = [
            lambda: run_sync(state, "single", args.events, 1),
            lambda: asyncio.run(run_alertlog(state, args.events)),
        ]
        for size in (int(s) for s in args.batches.split(",")):
            runs.append(functools.partial(run_sync, state, f"batch {size}", max(size, args.batch_events), size))
        for run in runs:
            run()


if __name__ == "__main__":
    main()
