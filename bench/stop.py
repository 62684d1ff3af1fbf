"""How long a stop (SIGTERM) takes while every sink's upstream hangs: it must end inside Docker's
10 s stop timeout and systemd's TimeoutStopSec (20 s), or the agent is killed halfway.

The agent runs as a real process (``python -m agent run``) from a checkout (``--root``, default this
one, so an older checkout can be measured with its own interpreter: ``--python``); each of its
``--sinks`` HTTP sinks points at a receiver in this process that takes the request and never
answers. Once every sink has a request in flight, the agent gets SIGTERM; the time until it exits is
printed per run, with the budget.

    .venv/bin/python bench/stop.py --runs 3
    .venv/bin/python bench/stop.py --root /work/base --python /work/base/.venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from agent.demo.receiver import Batch, Receiver, Reply
from drivers.modbus.sim import SimulatedMachine

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 10.0  # Docker's default stop timeout; systemd's TimeoutStopSec is 20 s


def config(state: Path, port: int, urls: list[str]) -> str:
    text = f"""
[agent]
state_dir = "{state}"

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "100ms"

  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3

[[rules]]
id = "fault"
machine = "m1"
signal = "fault"
kind = "fault"

[status]
listen = ""
"""
    for i, url in enumerate(urls):
        text += f'\n[[sinks]]\nid = "up{i}"\nkind = "http"\nurl = "{url}"\ntimeout = "60s"\n'
    return text


async def one_run(root: Path, python: str, sinks: int) -> float:
    never = asyncio.Event()

    async def hang(batch: Batch, headers: dict[str, str]) -> Reply:
        await never.wait()
        return Reply(503)

    ups = [Receiver(hang) for _ in range(sinks)]
    async with SimulatedMachine() as machine:
        for up in ups:
            await up.start()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "agent.toml"
                path.write_text(config(Path(tmp) / "state", machine.port, [u.url for u in ups]))
                proc = await asyncio.create_subprocess_exec(
                    python, "-m", "agent", "run", "--config", str(path), cwd=root,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": str(root)},
                )  # fmt: skip
                await machine.set("holding", 10, [0b1000])  # an event for every sink
                while not all(up.requests for up in ups):
                    await machine.wait_requests(1)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
                return loop.time() - t0
        finally:
            for up in ups:
                await up.stop()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--sinks", type=int, default=3)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args()
    print(f"agent from {args.root}, {args.sinks} sinks whose upstream never answers; budget {BUDGET:g} s")
    for run in range(1, args.runs + 1):
        took = await one_run(args.root, args.python, args.sinks)
        print(f"run {run}: SIGTERM -> exit {took:.2f} s  {'PASS' if took < BUDGET else 'FAIL'}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
