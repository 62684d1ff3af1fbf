"""Helpers run as subprocesses by the fault tests: write events to an outbox until killed.

``python -m tests.outbox_writer <outbox file> <seed>``: the raw :class:`Outbox`. It prints
``start <last_seq>`` once the outbox is open, then every ``seq`` of a batch on its own line, but only
after :meth:`Outbox.append` has returned (the batch is committed and synced). Each batch also stores
the alert ``last`` = ``{"seq": <the batch's last seq>}`` in the same transaction, so the test can
check that events and alert state were committed together.

``python -m tests.outbox_writer agent <outbox file> <seed> <url> [options]``: the real path of the
agent: :class:`AlertLog` commits bursts of transitions to the :class:`AsyncOutbox` while a
:class:`Delivery` with the :class:`HttpSink` sends them to ``url``. It prints ``start <last_seq>``,
then ``c <seq>`` for every event once its commit has returned. With ``--count N`` it stops after N
events (``--hold``: delivery starts only then), waits until the upstream has everything (or set it
aside), prints ``drained <json stats>`` and exits 0; without it, it writes until killed. Each
event's ``data.n`` is its index in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import sys
from pathlib import Path

from agent.model import Severity, StoredEvent, Transition, TransitionKind
from agent.pipeline.alertlog import AlertLog
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.sinks.http import HttpSink, HttpSinkConfig, make_client


def raw(argv: list[str]) -> None:
    path, seed = Path(argv[1]), int(argv[2])
    rng = random.Random(seed)
    outbox = Outbox(path, max_events=10**9, max_bytes=2**40)
    outbox.open()
    outbox.set_sinks(["s"])
    seq = outbox.last_seq()
    print(f"start {seq}", flush=True)
    while True:
        events = []
        for _ in range(rng.randint(1, 8)):
            seq += 1
            body = json.dumps({"id": f"e{seq}", "data": {"seq": seq, "pad": "x" * rng.randint(0, 3000)}})
            events.append(StoredEvent(seq, f"e{seq}", Severity(rng.randint(1, 3)), body.encode()))
        outbox.append(events, {"last": {"seq": seq}})
        sys.stdout.write("".join(f"{e.seq}\n" for e in events))
        sys.stdout.flush()


def transition(n: int, rng: random.Random) -> Transition:
    rule = f"r{n % 7}"
    return Transition(
        machine="m1",
        rule=rule,
        signal="wear",
        kind=TransitionKind.RAISED if rng.random() < 0.7 else TransitionKind.CLEARED,
        severity=Severity(rng.randint(1, 3)),
        value=round(rng.uniform(0, 100), 1),
        threshold=80.0,
        message=f"wear {n}",
        time=1_700_000_000.0 + n,
        extra={"n": n},
    )


async def agent(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    cfg = HttpSinkConfig.model_validate(
        {"id": "up", "kind": "http", "url": args.url, "timeout": args.timeout, "retry_max": "200ms"}
    )
    async with AsyncOutbox(Outbox(Path(args.path), max_events=args.max_events, max_bytes=2**40)) as outbox:
        await outbox.call(outbox.sync.set_sinks, ["up"])
        async with make_client(cfg) as client:
            delivery = Delivery(
                HttpSink(cfg, client, None), outbox, batch_size=args.batch, retry_max=0.2, linger=args.linger
            )
            alerts = AlertLog(outbox, gateway="gw-faults", site="lab", on_commit=[delivery.wake])
            await alerts.load()
            delivery.report_drops = alerts.report_drops
            print(f"start {await outbox.call(outbox.sync.last_seq)}", flush=True)
            task = None if args.hold else asyncio.create_task(delivery.run())
            n = 0
            while args.count is None or n < args.count:
                size = rng.randint(1, 12)
                if args.count is not None:
                    size = min(size, args.count - n)
                events = await alerts.commit([transition(n + i, rng) for i in range(size)])
                n += size
                sys.stdout.write("".join(f"c {e.seq}\n" for e in events))
                sys.stdout.flush()
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.uniform(0, 0.005))  # bursts and pauses
            if task is None:  # --hold: the whole backlog is there before the first request
                task = asyncio.create_task(delivery.run())
            while await outbox.call(outbox.sync.depth, "up"):
                delivery.wake()
                await asyncio.sleep(0.02)
            delivery.stop()
            await task
            stats = {
                "delivery": dataclasses.asdict(delivery.stats()),
                "outbox": dataclasses.asdict(outbox.sync.stats()),
            }
            print(f"drained {json.dumps(stats)}", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "agent":
        p = argparse.ArgumentParser()
        p.add_argument("path")
        p.add_argument("seed", type=int)
        p.add_argument("url")
        p.add_argument("--count", type=int, default=None)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--linger", type=float, default=0.0)
        p.add_argument("--timeout", default="2s")
        p.add_argument("--hold", action="store_true", help="start delivering only after the last commit")
        p.add_argument("--max-events", type=int, default=10**7)
        args = p.parse_args(argv[2:])
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        asyncio.run(agent(args))
    else:
        raw(argv)


if __name__ == "__main__":
    main(sys.argv)
