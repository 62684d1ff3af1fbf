"""End-to-end alert latency: a register change on the PLC -> the upstream receiver has the event.

What it measures: the simulated machine (a real pymodbus server, :class:`SimulatedMachine`) runs
in its own process, so it never shares an event loop with the agent. On command it toggles the
fault bit (holding register 10, bit 3) and records ``time.monotonic()`` right after the value is in
its register table. The bench process runs the real :class:`Agent` (real Modbus driver, real SQLite
outbox with ``synchronous=FULL`` in a temporary directory, real HTTP sink) delivering to a real
:class:`Receiver`, which records ``time.monotonic()`` when each event arrives. On Linux
``CLOCK_MONOTONIC`` is system-wide, so the two processes' readings are directly comparable.

Each toggle is one change and gives exactly one event (``raised`` when the bit goes on,
``cleared`` when it goes off); change k+1 is made only after the event of change k has arrived,
and changes are spaced irregularly (1.5 to 4.5 poll intervals, i.e. 150-450 ms at 100 ms) so they
are not phase-locked to the poll. A few warm-up changes (connection set-up, first SQLite pages)
are not counted.

It prints the median, p90, p99 and max of change -> received, a breakdown (change -> start of the
poll that saw it, the Modbus read, read -> committed to the outbox, committed -> received), and
PASS/FAIL of p99 against the budget: the poll interval plus 20 ms. The exit status is 0 on PASS.

Run it (about a minute with the defaults)::

    .venv/bin/python bench/latency.py
    .venv/bin/python bench/latency.py --changes 500 --poll-ms 50 --state-dir /var/lib/andon-agent-bench
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from common import RemoteProcess, change_and_catch, first_read, pct

from agent.config import Config, MachineBase, parse_config
from agent.demo.receiver import Receiver
from agent.model import Sample, StoredEvent, Transition
from agent.pipeline.supervisor import Agent
from drivers.base import Driver
from drivers.modbus.sim import SimulatedMachine
from drivers.registry import make_driver

FAULT_ADDRESS = 10  # holding register of the fault word
FAULT_BIT = 3
BUDGET_SLACK_MS = 20.0  # the budget is the poll interval plus this
GAP = (1.5, 4.5)  # change k+1 comes this many poll intervals after change k (uniformly random)
QUIET_AFTER_EVENT = 0.05  # ...but at least this long after event k arrived (its settle is done by then)
SUBJECT = "m1/fault"

# -- the simulated machine, in its own process --------------------------------------------------


def serve(conn: Connection) -> None:
    """Child process: a simulated machine; each received int is written to the fault register.

    Protocol on the pipe: the child sends its port once, then for each int it receives it writes the
    register and answers the ``time.monotonic()`` just after the write. ``None`` (or EOF) stops it.
    """
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(conn))


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        async with SimulatedMachine(registers=32) as machine:
            conn.send(machine.port)
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
                    await machine.set("holding", FAULT_ADDRESS, [int(value)])
                    conn.send(time.monotonic())
    finally:
        loop.remove_reader(conn.fileno())


@dataclass(frozen=True)
class Measurement:
    change: float  # server process: the register holds the new value
    read_start: float  # agent: start of the poll that saw it
    read_end: float
    committed: float  # agent: AlertLog.commit returned (synced to disk)
    received: float  # receiver: the event arrived


class RemoteMachine(RemoteProcess):
    """The bench's handle on the simulated machine's process."""

    def __init__(self) -> None:
        super().__init__(serve, name="andon-bench-sim")
        self.port = 0

    async def start(self, within: float = 30.0) -> Any:
        self.port = int(await super().start(within))
        return self.port

    async def set_fault(self, on: bool) -> float:
        """Set or clear the fault bit; returns the server's monotonic time of the change."""
        return float(await self.ask((1 << FAULT_BIT) if on else 0))


# -- instrumentation in the agent's process -----------------------------------------------------


@dataclass
class ReadClock:
    """Monotonic start and end of the latest driver read."""

    start: float = 0.0
    end: float = 0.0


class TimedDriver:
    """Wraps the real driver and notes when each read starts and ends."""

    def __init__(self, inner: Driver, clock: ReadClock) -> None:
        self._inner = inner
        self._clock = clock

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def read(self) -> list[Sample]:
        start = time.monotonic()
        samples = await self._inner.read()
        self._clock.start, self._clock.end = start, time.monotonic()
        return samples


@dataclass(frozen=True)
class Commit:
    """When an event was committed, and the read that produced it."""

    committed: float
    read_start: float
    read_end: float


def bench_config(port: int, url: str, poll_ms: float, state_dir: Path) -> Config:
    return parse_config(
        {
            "agent": {"gateway_id": "bench", "site": "bench", "state_dir": str(state_dir)},
            "machines": [
                {
                    "id": "m1",
                    "protocol": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "poll_interval": f"{poll_ms:g}ms",
                    "offline_after": "10s",
                    "timeout": "1s",
                    "reconnect_max": "1s",
                    "signals": [
                        {"id": "wear", "register": "holding", "address": 0, "type": "uint16", "scale": 0.1},
                        {"id": "fault", "register": "holding", "address": FAULT_ADDRESS, "type": "bit", "bit": 3},
                    ],
                }
            ],
            "rules": [
                {"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80, "critical": 95},
                # The bench toggles this fault hundreds of times on purpose: no chattering or flood handling.
                {"id": "fault", "machine": "m1", "signal": "fault", "kind": "fault", "chatter_count": 0},
            ],
            "alerts": {"flood_count": 0},
            "status": {"listen": None},
            "sinks": [{"id": "up", "kind": "http", "url": url, "timeout": "2s", "retry_max": "1s"}],
        },
        "<bench>",
    )


# -- the run ------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, state_dir: Path) -> tuple[list[Measurement], list[dict[str, Any]]]:
    """Make the changes; returns one measurement per counted change and any unexpected events."""
    rng = random.Random(args.seed)
    poll = args.poll_ms / 1000.0
    wait_limit = max(5.0, 20 * poll)
    arrivals: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    commits: dict[int, Commit] = {}
    reads = ReadClock()

    def on_event(event: dict[str, Any]) -> None:
        arrivals.put_nowait((time.monotonic(), event))

    def observe(t: Transition, e: StoredEvent) -> None:
        # Called in the poll task right after the commit, before its next read: ``reads`` is the read that saw it.
        commits[e.seq] = Commit(time.monotonic(), reads.start, reads.end)

    sim = RemoteMachine()
    await sim.start()
    try:
        async with Receiver(on_event=on_event) as receiver:
            cfg = bench_config(sim.port, receiver.url, args.poll_ms, state_dir)

            def factory(m: MachineBase) -> Driver:
                return TimedDriver(make_driver(m), reads)

            agent = Agent(cfg, observers=[observe], driver_factory=factory)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop), name="agent")
            try:
                await first_read(agent, task, 10)
                out: list[Measurement] = []
                unexpected: list[dict[str, Any]] = []
                for k in range(args.warmup + args.changes):
                    change, received, event = await change_and_catch(
                        sim.set_fault, k % 2 == 0, arrivals, SUBJECT, wait_limit, unexpected
                    )
                    seq = int(event["data"]["seq"])
                    c = commits[seq]
                    if k >= args.warmup:
                        out.append(Measurement(change, c.read_start, c.read_end, c.committed, received))
                    next_change = max(change + rng.uniform(*GAP) * poll, received + QUIET_AFTER_EVENT)
                    await asyncio.sleep(max(0.0, next_change - time.monotonic()))
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
    finally:
        await sim.stop()
    return out, unexpected


def report(args: argparse.Namespace, ms: list[Measurement], unexpected: list[dict[str, Any]], state_dir: str) -> bool:
    budget = args.poll_ms + BUDGET_SLACK_MS
    total = [(m.received - m.change) * 1000 for m in ms]
    rows = [
        ("change -> received", total),
        ("  change -> poll starts", [(m.read_start - m.change) * 1000 for m in ms]),
        ("  Modbus read", [(m.read_end - m.read_start) * 1000 for m in ms]),
        ("  read -> committed", [(m.committed - m.read_end) * 1000 for m in ms]),
        ("  committed -> received", [(m.received - m.committed) * 1000 for m in ms]),
    ]
    lo, hi = (g * args.poll_ms for g in GAP)
    print(f"changes        {len(ms)} (+{args.warmup} warm-up), one every {lo:g}-{hi:g} ms, seed {args.seed}")
    print(f"poll interval  {args.poll_ms:g} ms")
    print(f"outbox         {state_dir} (SQLite WAL, synchronous=FULL)")
    print()
    print(f"{'latency (ms)':<26}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for name, values in rows:
        print(
            f"{name:<26}"
            + "".join(
                f"{v:8.1f}" for v in (statistics.median(values), *(pct(values, p) for p in (90, 99)), max(values))
            )
        )
    print("(breakdown rows are separate distributions: their percentiles do not add up)")
    print()
    if unexpected:
        kinds = ", ".join(sorted({f"{e['type']} {e['subject']}" for e in unexpected}))
        print(f"unexpected events: {len(unexpected)} ({kinds})")
    p99 = pct(total, 99)
    ok = p99 <= budget and not unexpected
    print(f"budget         p99 <= poll + {BUDGET_SLACK_MS:g} ms = {budget:g} ms")
    print(f"result         p99 = {p99:.1f} ms: {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=200, help="counted register changes (default 200)")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="the machine's poll_interval in ms (default 100)")
    parser.add_argument("--warmup", type=int, default=4, help="uncounted changes first (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random spacing (default: random)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="make the outbox's temp dir under this directory (default: the system temp dir)",
    )
    args = parser.parse_args(argv)
    if args.changes < 1 or args.warmup < 0 or args.poll_ms <= 0:
        parser.error("--changes must be >= 1, --warmup >= 0 and --poll-ms > 0")
    if args.seed is None:
        args.seed = random.randrange(1 << 16)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="andon-bench-", dir=args.state_dir) as tmp:
        ms, unexpected = asyncio.run(measure(args, Path(tmp)))
        ok = report(args, ms, unexpected, tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
