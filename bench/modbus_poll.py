"""Modbus polling cost: 1,000 signals at 1 s against a pymodbus server in another process.

    .venv/bin/python bench/modbus_poll.py                 # 60 s measured, after a 3 s warm-up
    .venv/bin/python bench/modbus_poll.py --seconds 120 --signals 1000 --poll-ms 1000
    .venv/bin/python bench/modbus_poll.py --packed         # the same signals without gaps: fewer requests
    .venv/bin/python bench/modbus_poll.py --seconds 20 --profile 30   # where the CPU goes
    .venv/bin/python bench/modbus_poll.py --usage off      # without the usage fold ([usage] enabled = false)

The simulated machine (a real pymodbus TCP server, :class:`drivers.modbus.sim.SimulatedMachine`)
runs in a child process and counts the requests it receives. This process runs the real
:class:`agent.pipeline.supervisor.Agent` (the Modbus driver behind ``drivers.registry.Drivers``, rules on some of
the signals, the SQLite outbox in a temporary directory, no sink) and measures, over the window:

* requests per poll, counted by the server, next to the planner's minimum (they must be equal);
* the agent's CPU time (user + system, ``resource.getrusage``) as % of one core;
* the agent process's peak RSS (``ru_maxrss``), which includes the interpreter and its imports.

Budget: under 1 % of one core and under 60 MB RSS. Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CPU_BUDGET = 1.0  # % of one core
RSS_BUDGET = 60.0  # MB

TYPES = [("uint16", 1), ("int16", 1), ("int32", 2), ("uint32", 2), ("float32", 2), ("float64", 4), ("bit", 1)]
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


def signal_docs(n: int, seed: int, packed: bool = False) -> list[dict[str, Any]]:
    """``n`` signals: 40 % holding, 30 % input, 30 % coils; mostly packed, with small gaps that
    the planner bridges and some large ones it does not (``packed``: no gaps at all)."""
    rng = random.Random(seed)
    counts = {"holding": n * 4 // 10, "input": n * 3 // 10}
    counts["coil"] = n - counts["holding"] - counts["input"]
    docs: list[dict[str, Any]] = []
    for table, count in counts.items():
        address = 0
        for i in range(count):
            if not packed:
                address += rng.choice([0, 0, 0, 0, 1, 2, 5]) if i else 0
                if rng.random() < 0.02:
                    address += 40  # a big hole: a new request
            doc: dict[str, Any] = {"id": f"{table}_{i}", "register": table, "address": address}
            if table == "coil":
                doc["type"] = "bool"
                address += 1
            else:
                kind, width = rng.choice(TYPES)
                doc["type"] = kind
                if kind == "bit":
                    doc["bit"] = rng.randrange(16)
                elif width > 1:
                    doc["byte_order"] = rng.choice(ORDERS)
                if kind not in ("bit",) and rng.random() < 0.3:
                    doc["scale"] = 0.1
                address += width
            docs.append(doc)
    return docs


async def serve(registers: int) -> None:
    """Child process: serve and print the port; answer each line on stdin with the request count;
    stop when stdin closes."""
    from drivers.modbus.sim import SimulatedMachine

    async with SimulatedMachine(registers=registers) as sim:
        print(f"PORT {sim.port}", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(f"REQUESTS {sim.requests}", flush=True)


def start_server(registers: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--registers", str(registers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.split()[1])


def server_requests(proc: subprocess.Popen[str]) -> int:
    """The number of requests the server has received so far."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("count\n")
    proc.stdin.flush()
    return int(proc.stdout.readline().split()[1])


async def measure(args: argparse.Namespace, proc: subprocess.Popen[str], port: int, state_dir: Path) -> dict[str, Any]:
    from agent.config import parse_config
    from agent.pipeline.supervisor import Agent
    from drivers.modbus.config import ModbusMachine
    from drivers.modbus.driver import plan_for
    from drivers.registry import Drivers

    signals = signal_docs(args.signals, args.seed, args.packed)
    numeric = [s["id"] for s in signals if s["type"] not in ("bool", "bit")]
    rules = [
        {"id": f"r{i}", "machine": "bench", "signal": sid, "kind": "threshold", "warning": 1e9}
        for i, sid in enumerate(numeric[:100])
    ]
    cfg = parse_config(
        {
            "agent": {"gateway_id": "bench", "state_dir": str(state_dir)},
            "machines": [
                {
                    "id": "bench",
                    "protocol": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "poll_interval": args.poll_ms / 1000,
                    "timeout": "1s",
                    "signals": signals,
                }
            ],
            "rules": rules,
            "status": {"listen": None},
            "usage": {"enabled": args.usage == "on"},
        }
    )
    machine = cfg.machines[0]
    assert isinstance(machine, ModbusMachine)
    plan = plan_for(machine)
    drivers = Drivers()
    read_cpu = [0.0]

    class Timed:
        """The real driver; notes the CPU time the process spends while a read is in progress."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def __aenter__(self) -> Timed:
            await self._inner.__aenter__()
            return self

        async def __aexit__(self, *exc: Any) -> None:
            await self._inner.__aexit__(*exc)

        async def read(self) -> Any:
            t = time.process_time()
            try:
                return await self._inner.read()
            finally:
                read_cpu[0] += time.process_time() - t

    agent = Agent(cfg, driver_factory=lambda m: Timed(drivers(m)))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await agent.started.wait()
    runner = agent.machines[0]

    async def next_poll() -> int:
        """Wait until a poll has just finished (the next one is a poll interval away)."""
        seen = runner.status.reads
        while runner.status.reads == seen:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return runner.status.reads

    loop = asyncio.get_running_loop()
    await next_poll()
    await asyncio.sleep(args.warmup)
    reads0 = await next_poll()
    requests0 = await loop.run_in_executor(None, server_requests, proc)
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    cpu0, t0, reading0 = cpu_seconds(), time.monotonic(), read_cpu[0]
    if profiler:
        profiler.enable()
    await asyncio.sleep(args.seconds)
    reads1 = await next_poll()
    if profiler:
        profiler.disable()
    cpu1, t1, reading1 = cpu_seconds(), time.monotonic(), read_cpu[0]
    requests1 = await loop.run_in_executor(None, server_requests, proc)
    good = not runner.status.bad_signals
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    stop.set()
    await task
    await drivers.aclose()
    return {
        "plan": plan,
        "polls": reads1 - reads0,
        "requests": requests1 - requests0,
        "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "read_pct": 100 * (reading1 - reading0) / (t1 - t0),
        "wall": t1 - t0,
        "good": good,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured run time (default 60)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--signals", type=int, default=1000)
    parser.add_argument("--poll-ms", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--packed", action="store_true", help="signals without gaps (fewer requests per poll)")
    parser.add_argument(
        "--usage", choices=["on", "off"], default="on", help="the usage fold ([usage] enabled; default on)"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print the N functions using most CPU (it inflates CPU)"
    )
    parser.add_argument("--registers", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.registers))
        return 0

    proc, port = start_server(args.registers)
    try:
        with tempfile.TemporaryDirectory(prefix="andon-bench-") as tmp:
            result = asyncio.run(measure(args, proc, port, Path(tmp)))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plan = result["plan"]
    tables = {t: sum(1 for r in plan if r.table == t) for t in ("holding", "input", "coil")}
    requests = result["requests"]
    per_poll = requests / result["polls"] if result["polls"] else float("nan")
    checks = {
        "requests per poll == planner minimum": per_poll == len(plan),
        f"CPU < {CPU_BUDGET:g} % of one core": result["cpu_pct"] < CPU_BUDGET,
        f"peak RSS < {RSS_BUDGET:g} MB": rss_mb < RSS_BUDGET,
        "every sample good": result["good"],
    }
    print(f"signals            {args.signals} (holding/input/coil), poll every {args.poll_ms} ms, usage {args.usage}")
    print(f"planner minimum    {len(plan)} requests per poll ({', '.join(f'{t} {n}' for t, n in tables.items())})")
    print(f"requests per poll  {per_poll:.3f} ({requests} requests / {result['polls']} polls, counted by the server)")
    print(f"measured           {result['polls']} polls in {result['wall']:.1f} s")
    print(f"agent CPU          {result['cpu_pct']:.3f} % of one core")
    print(f"  in Modbus reads  {result['read_pct']:.3f} % (driver, codec, client; the rest: rules, runtime, loop)")
    print(f"agent peak RSS     {rss_mb:.1f} MB")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
