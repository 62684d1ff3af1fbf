"""OPC UA alert latency: a value written on the server -> the upstream receiver has the event.

Measured twice at the same ``poll_interval``: with a subscription (``mode = "subscribe"``, the
default: the server samples and publishes every poll_interval) and with polling (``mode = "poll"``:
one Read of every node per poll_interval).

What it measures: an asyncua server runs in its own process, so it never shares an event loop with
the agent. On command it writes a Boolean fault variable and records ``time.monotonic()`` right
after the write returned. The bench process runs the real :class:`Agent` (real OPC UA driver, real
SQLite outbox with ``synchronous=FULL`` in a temporary directory, real HTTP sink) delivering to a
real :class:`Receiver`, which records ``time.monotonic()`` when each event arrives. On Linux
``CLOCK_MONOTONIC`` is system-wide, so the two processes' readings are comparable.

Each write toggles the fault and gives exactly one event (``raised``, then ``cleared``); change k+1
is made only after the event of change k has arrived, 1.5 to 4.5 poll intervals after change k
(random, so changes are not phase-locked to the poll or the publishing cycle). A few warm-up
changes per mode are not counted.

It prints, per mode, the median, p90, p99 and max of change -> received and of its two parts
(change -> committed to the outbox, committed -> received).

Run it (about a minute with the defaults)::

    .venv/bin/python bench/opcua_latency.py
    .venv/bin/python bench/opcua_latency.py --changes 200 --poll-ms 250 --modes subscribe
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

NS_URI = "urn:andon:bench"
GAP = (1.5, 4.5)  # change k+1 comes this many poll intervals after change k (uniformly random)
QUIET_AFTER_EVENT = 0.05  # ...but at least this long after event k arrived
SUBJECT = "m1/fault"

# -- the OPC UA server, in its own process ------------------------------------------------------


def serve(conn: Connection, port: int) -> None:
    """Child process: an asyncua server; each bool received is written to the fault variable.

    Protocol on the pipe: the child sends its namespace index once it listens, then for each bool
    it writes the variable and answers the ``time.monotonic()`` just after the write. ``None``
    (or EOF) stops it.
    """
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(conn, port))


async def _serve(conn: Connection, port: int) -> None:
    from asyncua import ua
    from asyncua.server.server import Server

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    ns = await server.register_namespace(NS_URI)
    # asyncua annotates NodeId's arguments as String/Int32 and Int16; it takes a plain str or int.
    fault = await server.nodes.objects.add_variable(ua.NodeId("Fault", ns), "Fault", False)  # type: ignore[arg-type]
    # asyncua annotates NodeId's arguments as String/Int32 and Int16; it takes a plain str or int.
    await server.nodes.objects.add_variable(ua.NodeId("Wear", ns), "Wear", 12.5)  # type: ignore[arg-type]
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
                        value = conn.recv()
                    except EOFError:
                        return
                    if value is None:
                        return
                    await fault.write_value(bool(value))
                    conn.send(time.monotonic())
    finally:
        loop.remove_reader(conn.fileno())


class RemoteServer(RemoteProcess):
    """The bench's handle on the server process."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        super().__init__(serve, self.port, name="andon-bench-opcua")
        self.ns = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/bench/"

    async def start(self, within: float = 60.0) -> Any:
        self.ns = int(await super().start(within))
        return self.ns

    async def set_fault(self, on: bool) -> float:
        """Write the fault variable; returns the server's monotonic time right after the write."""
        return float(await self.ask(on))


# -- the run ------------------------------------------------------------------------------------


def bench_config(server: RemoteServer, mode: str, url: str, poll_ms: float, state_dir: Path) -> Config:
    ns = server.ns
    return parse_config(
        {
            "agent": {"gateway_id": "bench", "site": "bench", "state_dir": str(state_dir)},
            "machines": [
                {
                    "id": "m1",
                    "protocol": "opcua",
                    "endpoint": server.endpoint,
                    "mode": mode,
                    "poll_interval": f"{poll_ms:g}ms",
                    "offline_after": "10s",
                    "timeout": "1s",
                    "reconnect_max": "1s",
                    "signals": [
                        {"id": "wear", "node": f"ns={ns};s=Wear"},
                        {"id": "fault", "node": f"ns={ns};s=Fault"},
                    ],
                }
            ],
            "rules": [
                {"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80, "critical": 95},
                # Toggling a fault hundreds of times is chattering and a flood by design: both off here.
                {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault", "chatter_count": 0},
            ],
            "alerts": {"flood_count": 0},
            "status": {"listen": None},
            "sinks": [{"id": "up", "kind": "http", "url": url, "timeout": "2s", "retry_max": "1s"}],
        },
        "<bench>",
    )


async def measure_mode(
    server: RemoteServer, mode: str, args: argparse.Namespace, state_dir: Path
) -> tuple[list[Measurement], list[dict[str, Any]]]:
    """Make the changes with the agent in ``mode``; one measurement per counted change."""
    rng = random.Random(args.seed)
    poll = args.poll_ms / 1000.0
    wait_limit = max(5.0, 20 * poll)
    arrivals: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    commits: dict[int, float] = {}

    def on_event(event: dict[str, Any]) -> None:
        arrivals.put_nowait((time.monotonic(), event))

    def observe(t: Transition, e: StoredEvent) -> None:
        commits[e.seq] = time.monotonic()

    await server.set_fault(False)
    async with Receiver(on_event=on_event) as receiver:
        cfg = bench_config(server, mode, receiver.url, args.poll_ms, state_dir)
        agent = Agent(cfg, observers=[observe])
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="agent")
        try:
            await first_read(agent, task, 20)
            out: list[Measurement] = []
            unexpected: list[dict[str, Any]] = []
            for k in range(args.warmup + args.changes):
                change, received, event = await change_and_catch(
                    server.set_fault, k % 2 == 0, arrivals, SUBJECT, wait_limit, unexpected
                )
                if k >= args.warmup:
                    out.append(Measurement(change, commits[int(event["data"]["seq"])], received))
                next_change = max(change + rng.uniform(*GAP) * poll, received + QUIET_AFTER_EVENT)
                await asyncio.sleep(max(0.0, next_change - time.monotonic()))
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    return out, unexpected


def report(mode: str, ms: list[Measurement], unexpected: list[dict[str, Any]]) -> dict[str, float]:
    total = [(m.received - m.change) * 1000 for m in ms]
    rows = [
        (f"{mode}: change -> received", total),
        ("  change -> committed", [(m.committed - m.change) * 1000 for m in ms]),
        ("  committed -> received", [(m.received - m.committed) * 1000 for m in ms]),
    ]
    for name, values in rows:
        figures = (statistics.median(values), *(pct(values, p) for p in (90, 99)), max(values))
        print(f"{name:<34}" + "".join(f"{v:8.1f}" for v in figures))
    if unexpected:
        kinds = ", ".join(sorted({f"{e['type']} {e['subject']}" for e in unexpected}))
        print(f"  unexpected events: {len(unexpected)} ({kinds})")
    return {"median": statistics.median(total), "p99": pct(total, 99)}


async def run(args: argparse.Namespace, tmp: Path) -> bool:
    server = RemoteServer()
    await server.start()
    results: dict[str, dict[str, float]] = {}
    clean = True
    try:
        lo, hi = (g * args.poll_ms for g in GAP)
        print(f"changes        {args.changes} per mode (+{args.warmup} warm-up), one every {lo:g}-{hi:g} ms")
        print(f"poll interval  {args.poll_ms:g} ms (subscription: sampling and publishing interval)")
        print(f"outbox         {tmp} (SQLite WAL, synchronous=FULL), seed {args.seed}")
        print()
        print(f"{'latency (ms)':<34}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}")
        for mode in args.modes:
            ms, unexpected = await measure_mode(server, mode, args, tmp / mode)
            results[mode] = report(mode, ms, unexpected)
            clean = clean and not unexpected
    finally:
        await server.stop()
    print()
    for mode, r in results.items():
        print(f"result {mode:<10} median {r['median']:.1f} ms, p99 {r['p99']:.1f} ms")
    return clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=120, help="counted changes per mode (default 120)")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="the machine's poll_interval in ms (default 100)")
    parser.add_argument("--warmup", type=int, default=4, help="uncounted changes first, per mode (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random spacing (default: random)")
    parser.add_argument(
        "--modes", nargs="+", choices=["subscribe", "poll"], default=["subscribe", "poll"], help="modes to measure"
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="make the outbox's temp dir under this directory")
    args = parser.parse_args(argv)
    if args.changes < 1 or args.warmup < 0 or args.poll_ms <= 0:
        parser.error("--changes must be >= 1, --warmup >= 0 and --poll-ms > 0")
    if args.seed is None:
        args.seed = random.randrange(1 << 16)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="andon-bench-opcua-", dir=args.state_dir) as tmp:
        ok = asyncio.run(run(args, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
