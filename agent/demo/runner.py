"""``andon-agent demo``: a simulated press, the agent watching it, the andon board, and a local receiver.

It tells the story of :mod:`agent.demo.story` in two minutes (``--speed`` makes it faster): the
tool wears out (the forecast warns long before the limit, the threshold escalates, the tool change
clears it), the spindle faults, the network to the upstream is cut for 20 s while events wait in
the outbox and then arrive in order, and the press is unplugged (its offline alert). The board's
URL comes first, so the story can be watched there while the terminal shows each event when it is
committed and when the receiver has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import Config, load_config
from agent.demo.receiver import Receiver
from agent.demo.story import acts_between, scene
from agent.model import StoredEvent, Transition
from agent.pipeline.supervisor import Agent
from drivers.modbus.codec import encode
from drivers.modbus.sim import SimulatedMachine

DEMO_CONFIG = Path(__file__).resolve().parent / "data" / "demo.toml"  # a link to config/demo.toml
STEP = 0.1  # seconds between two looks at the story


def _paint(text: str, color: str) -> str:
    codes = {"info": "36", "warning": "33", "critical": "31;1", "ok": "32", "dim": "2", "act": "1"}
    return f"\033[{codes[color]}m{text}\033[0m" if sys.stdout.isatty() else text


def _line(stage: str, event: dict[str, Any]) -> str:
    data = event["data"]
    kind = event["type"].rsplit(".", 1)[1]
    severity = data.get("severity", "info")
    color = "ok" if kind == "cleared" else severity
    label = _paint(f"{kind:<7} {severity:<8}", color)
    text = data.get("message", "")
    if kind == "acknowledged":
        text = f"by {data.get('by')}" + (f": {data['note']}" if data.get("note") else "")
    return (
        f"{time.strftime('%H:%M:%S')}  {_paint(f'{stage:<9}', 'dim')} #{data['seq']} "
        f"{label} {event['subject']:<22} {text}"
    )


def _say(text: str, color: str = "dim") -> None:
    print(_paint(f"{time.strftime('%H:%M:%S')}  {text}", color), flush=True)


def board_port(wanted: int) -> int:
    """``wanted`` if nothing listens there, else a free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def demo_config(base: Config, *, port: int, url: str, state_dir: Path, board: int, speed: float = 1.0) -> Config:
    """The demo's config on these ports, its durations shortened ``speed`` times."""

    def fast(seconds: float, least: float) -> float:
        return max(seconds / speed, least)

    machines = [
        m.model_copy(
            update={
                "port": port,
                "poll_interval": fast(m.poll_interval, 0.05),
                "offline_after": fast(m.offline_after, 0.75),
                "reconnect_max": fast(m.reconnect_max, 0.5),
            }
        )
        for m in base.machines
    ]
    rules = []
    for r in base.rules:
        update: dict[str, float] = {"chatter_window": fast(r.chatter_window, 1.0)}
        for key in ("window", "horizon"):  # the forecast's
            if hasattr(r, key):
                update[key] = fast(getattr(r, key), 1.0)
        rules.append(r.model_copy(update=update))
    return base.model_copy(
        update={
            "machines": machines,
            "rules": rules,
            "sinks": [s.model_copy(update={"url": url}) for s in base.sinks],
            "agent": base.agent.model_copy(update={"state_dir": state_dir}),
            "status": base.status.model_copy(update={"listen": f"127.0.0.1:{board}"}),
            "alerts": base.alerts.model_copy(update={"flood_window": fast(base.alerts.flood_window, 10.0)}),
        }
    )


async def play(machine: SimulatedMachine, receiver: Receiver, *, speed: float, rng: random.Random) -> None:
    """Act the story out: the press's registers, the network, the press's plug, and say each act."""
    start, told = time.monotonic(), -1.0
    while True:
        t = (time.monotonic() - start) * speed
        for act in acts_between(told, t):
            _say(f"== {act}", "act")
        told = t
        now = scene(t)
        if now.network_down and receiver.running:
            await receiver.stop()
        elif not now.network_down and not receiver.running:
            await receiver.start()
        if now.unplugged and machine.running:
            await machine.stop()
        elif not now.unplugged and not machine.running:
            await machine.start()
        if machine.running:
            wear = now.wear + rng.uniform(-0.15, 0.15)  # a real sensor is never still
            strokes = int(t * 16)
            await machine.set("holding", 0, [max(0, int(wear * 10))])
            await machine.set("holding", 2, encode(strokes % 2**32, "uint32", "CDAB"))
            await machine.set("holding", 10, [0b1000 if now.fault else 0])
        await asyncio.sleep(STEP)


def _introduce(board: int, token: str, machine: SimulatedMachine, receiver: Receiver, speed: float) -> None:
    print(_paint(f"andon board: http://127.0.0.1:{board}/", "act"))
    print(f"  (acknowledge alerts there with the token {token})")
    print(f"simulated press-1 on 127.0.0.1:{machine.port}, upstream receiver at {receiver.url}")
    minutes = 2 / speed
    print(f"the story takes {minutes:g} minute{'s' if minutes != 1 else ''} and then starts again; Ctrl-C stops.\n")


async def run_demo(*, speed: float = 1.0, duration: float | None = None) -> None:
    base = load_config(DEMO_CONFIG)
    logging.getLogger("andon.alerts").setLevel(logging.WARNING)  # the demo prints each event itself
    token = secrets.token_urlsafe(8)
    os.environ[base.status.ack_token_env or "ANDON_DEMO_ACK_TOKEN"] = token  # this process's own, for the board
    with tempfile.TemporaryDirectory(prefix="andon-demo-") as tmp:
        async with (
            SimulatedMachine(registers=20) as machine,
            # The demo prints each event as it arrives and keeps none: it may run for weeks.
            Receiver(on_event=lambda e: print(_line("delivered", e), flush=True), keep=0) as receiver,
        ):
            board = board_port(9108)
            cfg = demo_config(base, port=machine.port, url=receiver.url, state_dir=Path(tmp), board=board, speed=speed)
            _introduce(board, token, machine, receiver, speed)

            def committed(t: Transition | None, e: StoredEvent) -> None:
                print(_line("committed", json.loads(e.body)), flush=True)

            stop = asyncio.Event()
            story = asyncio.create_task(play(machine, receiver, speed=speed, rng=random.Random()), name="story")
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, stop.set)
            with contextlib.suppress(NotImplementedError):
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
            try:
                await Agent(cfg, observers=[committed], usage_observers=[lambda e: committed(None, e)]).run(stop)
            finally:
                story.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await story
    print("demo stopped")
