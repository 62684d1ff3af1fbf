"""``andon-agent demo``: a simulated press, the agent watching it, and a local receiver.

The press's tool wears from 0 % to about 98 % over roughly two minutes, then the "tool is
changed" and it starts again; its spindle fault bit trips now and then. Each event is shown when it
is committed to the outbox and again when the receiver has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import Config, load_config
from agent.demo.receiver import Receiver
from agent.model import StoredEvent, Transition
from agent.pipeline.supervisor import Agent
from drivers.modbus.codec import encode
from drivers.modbus.sim import SimulatedMachine

DEMO_CONFIG = Path(__file__).resolve().parent / "data" / "demo.toml"  # a link to config/demo.toml


def _paint(text: str, color: str) -> str:
    codes = {"info": "36", "warning": "33", "critical": "31;1", "ok": "32", "dim": "2"}
    return f"\033[{codes[color]}m{text}\033[0m" if sys.stdout.isatty() else text


def _line(stage: str, event: dict[str, Any]) -> str:
    data = event["data"]
    kind = event["type"].rsplit(".", 1)[1]
    severity = data["severity"]
    color = "ok" if kind == "cleared" else severity
    label = _paint(f"{kind:<7} {severity:<8}", color)
    return (
        f"{time.strftime('%H:%M:%S')}  {_paint(f'{stage:<9}', 'dim')} #{data['seq']} "
        f"{label} {event['subject']:<22} {data['message']}"
    )


async def simulate(machine: SimulatedMachine, *, speed: float, rng: random.Random) -> None:
    """Drive the simulated press: wear climbs, the tool gets changed, the spindle faults now and then."""
    wear, strokes = 0.0, 0
    fault_until, next_fault = 0.0, 20.0 + rng.uniform(0, 20)
    step, t = 0.25, 0.0
    while True:
        wear += rng.uniform(0.1, 0.3) * speed  # about 0.8 %/s
        strokes += int(4 * speed)
        if wear >= 98.0:
            print(_paint(f"{time.strftime('%H:%M:%S')}  simulator: tool 1 changed on press-1", "dim"))
            wear = rng.uniform(0, 2)
        t += step * speed
        if t >= next_fault:
            print(_paint(f"{time.strftime('%H:%M:%S')}  simulator: spindle fault trips on press-1", "dim"))
            fault_until, next_fault = t + rng.uniform(4, 8), t + rng.uniform(70, 110)
        await machine.set("holding", 0, [int(wear * 10)])
        await machine.set("holding", 2, encode(strokes % 2**32, "uint32", "CDAB"))
        await machine.set("holding", 10, [0b1000 if t < fault_until else 0])
        await asyncio.sleep(step)


def demo_config(base: Config, *, port: int, url: str, state_dir: Path) -> Config:
    machines = [m.model_copy(update={"port": port}) for m in base.machines]
    sinks = [s.model_copy(update={"url": url}) for s in base.sinks]
    agent = base.agent.model_copy(update={"state_dir": state_dir})
    return base.model_copy(
        update={
            "machines": machines,
            "sinks": sinks,
            "agent": agent,
            "status": base.status.model_copy(update={"listen": None}),
        }
    )


async def run_demo(*, speed: float = 1.0, duration: float | None = None) -> None:
    base = load_config(DEMO_CONFIG)
    logging.getLogger("andon.alerts").setLevel(logging.WARNING)  # the demo prints each event itself
    rng = random.Random()
    with tempfile.TemporaryDirectory(prefix="andon-demo-") as tmp:
        async with (
            SimulatedMachine(registers=20) as machine,
            # The demo prints each event as it arrives and keeps none: it may run for weeks.
            Receiver(on_event=lambda e: print(_line("delivered", e), flush=True), keep=0) as receiver,
        ):
            cfg = demo_config(base, port=machine.port, url=receiver.url, state_dir=Path(tmp))

            def committed(t: Transition, e: StoredEvent) -> None:
                import json

                print(_line("committed", json.loads(e.body)), flush=True)

            print(f"andon-agent demo: simulated press-1 on 127.0.0.1:{machine.port}, receiver at {receiver.url}")
            print("tool 1 wears out over about two minutes (warning at 80 %, critical at 95 %); Ctrl-C stops.\n")
            stop = asyncio.Event()
            sim = asyncio.create_task(simulate(machine, speed=speed, rng=rng), name="simulator")
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, stop.set)
            with contextlib.suppress(NotImplementedError):
                import signal

                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
            try:
                await Agent(cfg, observers=[committed]).run(stop)
            finally:
                sim.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sim
    print("demo stopped")
