"""OPC UA alarm latency: an alarm activated on the server -> the upstream receiver has the event.

An asyncua server in its own process holds one real alarm condition (an OffNormalAlarm instance
under a "Spindle" object, :class:`drivers.opcua.sim.SimCondition`). On command it activates the
alarm (or clears it) and records ``time.monotonic()`` right after the event was handed to the
server's subscriptions. The bench process runs the real :class:`Agent` with an ``alarms`` rule
(real OPC UA driver and event subscription, real SQLite outbox with ``synchronous=FULL``, real HTTP
sink) delivering to a real :class:`Receiver`, which records ``time.monotonic()`` when each event
arrives (``CLOCK_MONOTONIC`` is system-wide on Linux, so the two are comparable).

Each activation gives one ``raised`` event, each clear one ``cleared``; the next change is made
only after the event of the last one arrived, 1.5 to 4.5 publishing intervals later (random, so
changes are not phase-locked to the publishing cycle). A few warm-up pairs are not counted.
Chattering and flood handling are off (toggling an alarm hundreds of times is both by design).

It prints the median, p90, p99 and max of activated -> received (and of its parts: -> committed to
the outbox, committed -> received), the same for clears, and PASS/FAIL of the activations' p99
against the budget **publishing interval + 100 ms**. Exit status 0 means PASS.

Run it (about a minute with the defaults)::

    .venv/bin/python bench/opcua_alarms.py                          # 100 activations, 100 ms
    .venv/bin/python bench/opcua_alarms.py --activations 300 --publish-ms 250
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import Measurement, RemoteProcess, change_and_catch, first_read, pct

from agent.config import Config, parse_config
from agent.demo.receiver import Receiver
from agent.model import StoredEvent, Transition
from agent.pipeline.supervisor import Agent

NS_URI = "urn:andon:bench:alarms"
GAP = (1.5, 4.5)  # change k+1 comes this many publishing intervals after change k (uniformly random)
QUIET_AFTER_EVENT = 0.05
SUBJECT = "m1/alarms/Spindle.Overheat"
BUDGET_MS = 100.0  # over the publishing interval

# -- the OPC UA server, in its own process ------------------------------------------------------


def serve(conn: Connection, port: int) -> None:
    """Child process: the server; True activates the alarm, False clears it; answers the time after."""
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(conn, port))


async def _serve(conn: Connection, port: int) -> None:
    from asyncua import ua
    from asyncua.server.server import Server

    from drivers.opcua.sim import SimCondition, enable_condition_refresh

    server = Server()
    enable_condition_refresh(server)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    ns = await server.register_namespace(NS_URI)
    # asyncua annotates NodeId's arguments as String/Int32 and Int16; it takes a plain str or int.
    await server.nodes.objects.add_variable(ua.NodeId("Wear", ns), "Wear", 12.5)  # type: ignore[arg-type]
    spindle = await server.nodes.objects.add_object(ua.NodeId("Spindle", ns), "Spindle")  # type: ignore[arg-type]
    alarm = await SimCondition.create(server, spindle, "Overheat", ua.NodeId("Spindle.Overheat", ns))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        async with server:
            conn.send(ns)
            while True:
                await readable.wait()
                readable.clear()
                while conn.poll():
                    try:
                        on = conn.recv()
                    except EOFError:
                        return
                    if on is None:
                        return
                    if on:
                        await alarm.activate(800, "Spindle too hot")
                    else:
                        await alarm.clear(message="Spindle temperature normal")
                    conn.send(time.monotonic())
    finally:
        loop.remove_reader(conn.fileno())


class RemoteServer(RemoteProcess):
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        super().__init__(serve, self.port, name="andon-bench-opcua-alarms")
        self.ns = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/bench/"

    async def start(self, within: float = 60.0) -> Any:
        self.ns = int(await super().start(within))
        return self.ns

    async def set_alarm(self, on: bool) -> float:
        return float(await self.ask(on))


# -- the run ------------------------------------------------------------------------------------


def bench_config(server: RemoteServer, url: str, publish_ms: float, state_dir: Path) -> Config:
    return parse_config(
        {
            "agent": {"gateway_id": "bench", "site": "bench", "state_dir": str(state_dir)},
            "machines": [
                {
                    "id": "m1",
                    "protocol": "opcua",
                    "endpoint": server.endpoint,
                    "poll_interval": f"{publish_ms:g}ms",  # the alarm subscription publishes at this interval
                    "offline_after": "10s",
                    "timeout": "1s",
                    "reconnect_max": "1s",
                    "signals": [{"id": "wear", "node": f"nsu={NS_URI};s=Wear"}],
                }
            ],
            "rules": [{"id": "alarms", "machine": "m1", "kind": "alarms", "chatter_count": 0}],
            "alerts": {"flood_count": 0},
            "status": {"listen": None},
            "sinks": [{"id": "up", "kind": "http", "url": url, "timeout": "2s", "retry_max": "1s"}],
        },
        "<bench>",
    )


async def measure(
    server: RemoteServer, args: argparse.Namespace, state_dir: Path
) -> tuple[list[Measurement], list[Measurement], list[dict[str, Any]]]:
    """Activate and clear the alarm ``warmup + activations`` times; (activations, clears, unexpected)."""
    rng = random.Random(args.seed)
    interval = args.publish_ms / 1000.0
    arrivals: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    commits: dict[int, float] = {}

    def observe(t: Transition, e: StoredEvent) -> None:
        commits[e.seq] = time.monotonic()

    on_out: list[Measurement] = []
    off_out: list[Measurement] = []
    unexpected: list[dict[str, Any]] = []
    async with Receiver(on_event=lambda ev: arrivals.put_nowait((time.monotonic(), ev))) as receiver:
        agent = Agent(bench_config(server, receiver.url, args.publish_ms, state_dir), observers=[observe])
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="agent")
        try:
            await first_read(agent, task, 20)
            # The alarm subscription may still be in the making: a warm-up activation made before it
            # exists still arrives, through its ConditionRefresh. Warm-ups are not counted.
            for k in range(2 * (args.warmup + args.activations)):
                on = k % 2 == 0
                change, received, event = await change_and_catch(
                    server.set_alarm, on, arrivals, SUBJECT, max(5.0, 20 * interval), unexpected
                )
                if k >= 2 * args.warmup:
                    measured = Measurement(change, commits[int(event["data"]["seq"])], received)
                    (on_out if on else off_out).append(measured)
                next_change = max(change + rng.uniform(*GAP) * interval, received + QUIET_AFTER_EVENT)
                await asyncio.sleep(max(0.0, next_change - time.monotonic()))
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    return on_out, off_out, unexpected


def report(name: str, ms: list[Measurement]) -> dict[str, float]:
    total = [(m.received - m.change) * 1000 for m in ms]
    rows = [
        (f"{name} -> received", total),
        ("  -> committed", [(m.committed - m.change) * 1000 for m in ms]),
        ("  committed -> received", [(m.received - m.committed) * 1000 for m in ms]),
    ]
    for label, values in rows:
        figures = (statistics.median(values), *(pct(values, p) for p in (90, 99)), max(values))
        print(f"{label:<30}" + "".join(f"{v:8.1f}" for v in figures))
    return {"median": statistics.median(total), "p99": pct(total, 99)}


async def run(args: argparse.Namespace, tmp: Path) -> bool:
    server = RemoteServer()
    await server.start()
    try:
        lo, hi = (g * args.publish_ms for g in GAP)
        print(f"activations     {args.activations} (+{args.warmup} warm-up), each followed by a clear")
        print(f"spacing         one change every {lo:g}-{hi:g} ms")
        print(f"publishing      every {args.publish_ms:g} ms (the machine's poll_interval)")
        print(f"outbox          {tmp} (SQLite WAL, synchronous=FULL), seed {args.seed}")
        print()
        print(f"{'latency (ms)':<30}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}")
        on, off, unexpected = await measure(server, args, tmp / "state")
        result = report("activated", on)
        report("cleared", off)
    finally:
        await server.stop()
    if unexpected:
        kinds = ", ".join(sorted({f"{e['type']} {e['subject']}" for e in unexpected}))
        print(f"unexpected events: {len(unexpected)} ({kinds})")
    budget = args.publish_ms + BUDGET_MS
    ok = result["p99"] <= budget and not unexpected
    print()
    print(
        f"result activated -> received: median {result['median']:.1f} ms, p99 {result['p99']:.1f} ms "
        f"(budget p99 <= {budget:g} ms): {'PASS' if ok else 'FAIL'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--activations", type=int, default=100, help="counted activations (default 100)")
    parser.add_argument("--publish-ms", type=float, default=100.0, help="publishing interval in ms (default 100)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted activations first (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random spacing (default: random)")
    parser.add_argument("--state-dir", type=Path, default=None, help="make the outbox's temp dir under this directory")
    args = parser.parse_args(argv)
    if args.activations < 1 or args.warmup < 0 or args.publish_ms <= 0:
        parser.error("--activations must be >= 1, --warmup >= 0 and --publish-ms > 0")
    if args.seed is None:
        args.seed = random.randrange(1 << 16)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="andon-bench-alarms-", dir=args.state_dir) as tmp:
        ok = asyncio.run(run(args, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
