"""Makes docs/board.png, the README's picture of the andon board, with Debian's headless Chromium.

    .venv/bin/python docs/board_screenshot.py [docs/board.png]

The board is the real server and page; what it shows is a demo-like day on four machines (alerts
and a day of history made up here, through the same alert state and history types the agent uses)
and a month of usage history for two of them, drawn by the same chart functions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.model import Severity, Transition, TransitionKind
from agent.ops.board.svg import faults, tool_life
from agent.ops.board.web import BoardServer
from agent.pipeline.alertlog import ActiveAlert
from tests.board_helpers import StubSource, chrome

C, W, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO
R, X = TransitionKind.RAISED, TransitionKind.CLEARED


def day(source: StubSource, now: float) -> None:
    """A day of alerts (the time lines) and the alerts active now (the tiles)."""
    past = [
        ("press-1", "tool1-wear", W, 22.0, 20.5),
        ("press-1", "tool1-wear", C, 20.5, 20.1),
        ("press-1", "spindle-fault", C, 15.2, 15.0),
        ("press-1", "tool1-due", W, 9.0, 6.2),
        ("press-1", "tool1-wear", W, 6.2, 4.8),
        ("press-2", "offline", W, 13.0, 12.4),
        ("press-2", "fault-code", W, 8.0, 7.1),
        ("lathe-3", "coolant", INFO, 18.0, 16.5),
        ("lathe-3", "tool3-life", W, 11.0, 9.5),
        ("mill-4", "spindle-temp", W, 3.0, 2.2),
    ]
    for machine, rule, sev, start_h, end_h in past:
        for kind, hours in ((R, start_h), (X, end_h)):
            t = Transition(machine, rule, None, kind, sev, None, None, f"{rule} on {machine}", now - hours * 3600)
            source.history.observe(t)
    active = [
        ("press-1/spindle-fault", C, "Spindle fault on press-1: check the spindle drive and reset the fault", 95),
        (
            "press-1/tool1-wear",
            W,
            "tool1_wear on press-1 is 86.2%, at or over the warning limit 80%: plan service",
            1260,
        ),
        (
            "press-2/offline",
            W,
            "press-2 is not answering: check its power, cable and network; the agent keeps reconnecting",
            2400,
        ),
        ("lathe-3/coolant", INFO, "Coolant level low on lathe-3: top up at the next stop", 600),
    ]
    for key, sev, message, age in active:
        source.active[key] = ActiveAlert(key, sev, None, message, now - age)
        machine, rule = key.split("/")
        source.history.observe(Transition(machine, rule, None, R, sev, None, None, message, now - age))
    press2 = source.machines[1]
    source.machines[1] = dataclasses.replace(press2, connected=False, last_good=now - 2405)
    acked = source.active["lathe-3/coolant"]
    source.active["lathe-3/coolant"] = dataclasses.replace(acked, ack_by="Ana", ack_at=now - 420, ack_note="on it")


def tools(*rows: tuple[str, str, int, float, float, int, int]) -> dict[str, dict[str, object]]:
    keys = ("tool", "count", "mean_life_fraction", "min_life_fraction", "early", "unwarned")
    return {rule: dict(zip(keys, values, strict=True)) for rule, *values in rows}


def codes(*rows: tuple[str, int, float, str]) -> dict[str, dict[str, object]]:
    return {key: {"count": n, "active_seconds": active, "text": text} for key, n, active, text in rows}


def usage(source: StubSource) -> None:
    """A month of tool changes and fault codes on press-1 and lathe-3 (the charts under the time lines)."""
    charts = {
        "press-1": (
            tools(("tool1-life", "tool 1", 14, 0.91, 0.62, 2, 0), ("tool2-life", "punch 2", 9, 0.71, 0.44, 5, 1)),
            codes(
                ("fault-code/12", 11, 5400.0, "Spindle overload"),
                ("fault-code/31", 6, 2100.0, "Coolant low"),
                ("fault-code/47", 2, 240.0, "Door opened while running"),
            ),
        ),
        "lathe-3": (
            tools(("tool3-life", "drill 3", 22, 0.95, 0.83, 0, 2)),
            codes(("alarms/SpindleTemp", 4, 3600.0, "Spindle bearing temperature high")),
        ),
    }
    for machine, (t, c) in charts.items():
        source.charts[f"tool-life-{machine}"] = tool_life(machine, t, 30)
        source.charts[f"faults-{machine}"] = faults(machine, c, 30)


async def main(out: Path) -> None:
    source = StubSource(["press-1", "press-2", "lathe-3", "mill-4"], gateway="gw-press-line", site="plant-a")
    source.ack_enabled = True
    day(source, time.time())
    usage(source)
    async with BoardServer(source, "127.0.0.1", 0, token="screenshot") as server:
        with tempfile.TemporaryDirectory() as profile:
            driver = await asyncio.to_thread(chrome, Path(profile), width=1600, height=2380)
            try:
                await asyncio.to_thread(driver.get, f"http://127.0.0.1:{server.port}/")
                await asyncio.sleep(3)  # the page draws, the time lines load
                await asyncio.to_thread(driver.save_screenshot, str(out))
            finally:
                await asyncio.to_thread(driver.quit)
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "board.png"))
