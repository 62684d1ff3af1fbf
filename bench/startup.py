"""Start-up cost: time from process start to the first poll, and peak RSS, with one Modbus machine.

    .venv/bin/python bench/startup.py [--runs 5] [--seconds 5]

The simulated machine (a pymodbus server) runs in this process; the agent runs as a real
``python -m agent run`` subprocess. "First poll" is the first Modbus request the machine receives,
timed from just before the process is spawned. Peak RSS is the agent's VmHWM after it has run for
``--seconds``. The agent also reports whether the OPC UA stack (asyncua) was imported: it must not
be, with no OPC UA machine configured. Budget: under 1 s and under 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.sim import SimulatedMachine

CONFIG = """
[agent]
gateway_id = "bench"
state_dir = "{state}"
[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "1s"
  [[machines.signals]]
  id = "wear"
  address = 0
[[rules]]
id = "wear"
machine = "m1"
signal = "wear"
kind = "threshold"
warning = 80
[status]
listen = "127.0.0.1:0"
"""

PROBE = (
    "import atexit, sys; from agent.cli import main; "
    "atexit.register(lambda: print('ASYNCUA_IMPORTED', 'asyncua' in sys.modules, flush=True)); "
    "sys.exit(main(['--log-level', 'warning', 'run', '--config', sys.argv[1]]))"
)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def one_run(machine: SimulatedMachine, seconds: float) -> tuple[float, float, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "agent.toml"
        cfg.write_text(CONFIG.format(state=Path(tmp) / "state", port=machine.port))
        first = asyncio.ensure_future(machine.wait_requests(1))
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, str(cfg), stdout=asyncio.subprocess.PIPE, env={**os.environ}
        )
        await asyncio.wait_for(first, 30)
        to_first_poll = time.monotonic() - t0
        await asyncio.sleep(seconds)  # let it settle into its steady state before reading the peak
        rss = vm_hwm_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
        imported = b"ASYNCUA_IMPORTED True" in out
        assert proc.returncode == 0, proc.returncode
        return to_first_poll, rss, imported


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    async with SimulatedMachine() as machine:
        results = [await one_run(machine, args.seconds) for _ in range(args.runs)]
    starts = [r[0] * 1000 for r in results]
    rss = [r[1] for r in results]
    print(f"runs: {args.runs}, one Modbus machine, status server on, poll 1 s")
    print(
        f"process start -> first poll: median {statistics.median(starts):.0f} ms, max {max(starts):.0f} ms "
        "(budget 1000 ms)"
    )
    print(f"peak RSS (VmHWM): median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB (budget 50 MB)")
    print(f"asyncua imported: {any(r[2] for r in results)}")
    ok = max(starts) < 1000 and max(rss) < 50 and not any(r[2] for r in results)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
