"""Drain rate of a 100,000-event backlog to a local receiver, and the agent's memory while draining.

What it measures: a backlog of ``--events`` real CloudEvents (about 600 bytes each) is written to a
fresh outbox by a child process (so the bench process starts clean). The receiver (the project's
real HTTP/1.1 :class:`Receiver`, which JSON-parses every batch) runs in **another process**. The
bench process then runs the agent's real delivery path: :class:`AsyncOutbox` (SQLite, WAL,
``synchronous=FULL``; every settle is a synced transaction), :class:`Delivery` and the
:class:`HttpSink` over a real TCP connection, with the default batch size (500) and linger, until
the outbox is empty. It prints events/s, the receiver's count, and the bench process's RSS:
at the start of the drain and the peak during it (sampled every 5 ms from /proc/self/status), and
their difference, against the budgets (>= 5,000 events/s; RSS growth < 20 MB). Exit status 0 on PASS.

    .venv/bin/python bench/outbox_drain.py
    .venv/bin/python bench/outbox_drain.py --events 100000 --batch-size 500 --state-dir /var/lib/andon-bench
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.model import Severity, StoredEvent, Transition, TransitionKind  # noqa: E402
from agent.pipeline.alertlog import cloudevent  # noqa: E402

RATE_BUDGET = 5000.0
RSS_BUDGET_MB = 20.0


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fill(path: Path, n: int) -> None:
    """Child process: write ``n`` events to a fresh outbox, 1,000 per commit."""
    from agent.pipeline.outbox import Outbox

    ob = Outbox(path, max_events=max(n, 100_000), max_bytes=2**40)
    ob.open()
    ob.set_sinks(["up"])
    seq = ob.last_seq()
    for start in range(0, n, 1000):
        batch = []
        for i in range(start, min(n, start + 1000)):
            seq += 1
            t = Transition(
                "press-1",
                f"tool{i % 8}-wear",
                f"tool{i % 8}_wear",
                TransitionKind.RAISED,
                Severity(1 + i % 3),
                81.5,
                80.0,
                f"tool{i % 8}_wear on press-1 is 81.5%, at or over the warning limit 80%: plan service soon",
                time.time(),
            )
            body = cloudevent(t, seq=seq, event_id=f"{seq:036d}", gateway="gw-bench", site="plant-a")
            batch.append(StoredEvent(seq, body["id"], t.severity, json.dumps(body, separators=(",", ":")).encode()))
        ob.append(batch, {})
    ob.close()
    print(path.stat().st_size, flush=True)


async def serve() -> None:
    """Child process: the receiver. Prints its port; on stdin EOF prints how many events it accepted."""
    from agent.demo.receiver import Receiver

    async with Receiver(keep=None) as r:  # keeps every event: the ids are checked
        print(r.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(len(r.events), len({e["id"] for e in r.events}), flush=True)


async def drain(path: Path, url: str, batch_size: int, linger: float) -> tuple[float, int, int, int]:
    from agent.pipeline.delivery import Delivery
    from agent.pipeline.outbox import AsyncOutbox, Outbox
    from agent.sinks.http import HttpSink, HttpSinkConfig, make_client

    cfg = HttpSinkConfig.model_validate({"id": "up", "kind": "http", "url": url})

    class Watched(AsyncOutbox):  # notices the end of the drain without polling
        drained = asyncio.Event()

        async def call(self, fn: Any, *a: Any) -> Any:
            try:
                return await super().call(fn, *a)
            finally:
                if self.sync.depth() == 0:
                    self.drained.set()

    ob = Watched(Outbox(path, max_events=10**7, max_bytes=2**40))
    async with ob:
        await ob.call(ob.sync.set_sinks, ["up"])
        backlog = ob.sync.depth()
        ob.drained.clear()
        async with make_client(cfg) as client:
            delivery = Delivery(HttpSink(cfg, client, None), ob, batch_size=batch_size, retry_max=1.0, linger=linger)
            gc.collect()
            start_rss = peak = rss_bytes()
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.005):
                    peak = max(peak, rss_bytes())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            task = asyncio.create_task(delivery.run())
            await ob.drained.wait()
            took = time.perf_counter() - started
            delivery.stop()
            await task
            done.set()
            sampler.join()
            peak = max(peak, rss_bytes())
    return took, backlog, start_rss, peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--linger", type=float, default=0.05)
    p.add_argument("--state-dir", type=Path, default=None, help="where the outbox goes (default: a temp dir)")
    p.add_argument("--fill", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.fill:
        fill(args.fill, args.events)
        return 0
    if args.serve:
        asyncio.run(serve())
        return 0
    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory(prefix="andon-drain-", dir=args.state_dir) as tmp:
        path = Path(tmp) / "outbox.db"
        t0 = time.perf_counter()
        size = int(
            subprocess.run(
                [*me, "--fill", str(path), "--events", str(args.events)], check=True, capture_output=True, text=True
            ).stdout
        )
        print(f"backlog: {args.events} events written in {time.perf_counter() - t0:.1f} s; file {size / 2**20:.1f} MiB")
        receiver = subprocess.Popen([*me, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None and receiver.stdin is not None
        port = int(receiver.stdout.readline())
        took, backlog, start_rss, peak = asyncio.run(
            drain(path, f"http://127.0.0.1:{port}/alerts", args.batch_size, args.linger)
        )
        receiver.stdin.close()
        got, unique = (int(x) for x in receiver.stdout.readline().split())
        receiver.wait()
    rate = backlog / took
    growth = (peak - start_rss) / 2**20
    print(
        f"drained {backlog} events in {took:.2f} s = {rate:,.0f} events/s (budget >= {RATE_BUDGET:,.0f}); "
        f"receiver (another process) got {got} ({unique} unique)"
    )
    print(
        f"agent RSS: {start_rss / 2**20:.1f} MiB at the start of the drain, peak {peak / 2**20:.1f} MiB, "
        f"growth {growth:.1f} MiB (budget < {RSS_BUDGET_MB:.0f} MB)"
    )
    ok = rate >= RATE_BUDGET and growth < RSS_BUDGET_MB and unique == backlog
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
