"""``andon-agent demo`` tells its whole story (here eight times faster): the board's URL first, then
the forecast, the threshold, the tool change, a spindle fault, the network cut with the events
delivered in order once it is back, and the press unplugged (offline raised and cleared)."""

from __future__ import annotations

import asyncio
import re
import sys

import httpx

from tests.agent_process import ROOT


async def test_the_demo_tells_the_story_and_serves_the_board() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "demo",
        "--speed",
        "8",
        "--duration",
        "18",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    first = (await proc.stdout.readline()).decode()
    url = re.fullmatch(r"andon board: (http://127\.0\.0\.1:\d+/)\n", first)
    assert url, first
    lines = [first]
    board: dict[str, object] = {}
    async with asyncio.timeout(60):
        while raw := await proc.stdout.readline():
            lines.append(raw.decode())
            if "committed" in lines[-1] and not board:  # the board is up by the first event
                async with httpx.AsyncClient() as http:
                    board = (await http.get(url.group(1) + "api/board")).json()
        assert await proc.wait() == 0
    out = "".join(lines)
    assert "Traceback" not in out
    assert board["gateway"] == "demo-gateway" and board["ack"] is True
    committed = [line for line in lines if re.search(r" committed #\d+ ", line)]
    delivered = [line for line in lines if re.search(r" delivered #\d+ ", line)]

    def seqs(ls: list[str]) -> list[int]:
        return [int(m.group(1)) for m in (re.search(r" #(\d+) ", line) for line in ls) if m]

    assert seqs(delivered) == sorted(seqs(delivered)) == seqs(committed)  # every event, in order
    for text in (
        "raised  warning  press-1/tool1-due",  # the forecast warns first ...
        "raised  warning  press-1/tool1-wear",
        "updated critical press-1/tool1-wear",  # ... then the threshold escalates
        "cleared critical press-1/tool1-wear",  # the tool change
        "raised  critical press-1/spindle-fault",
        "raised  warning  press-1/offline",
        "cleared warning  press-1/offline",
    ):
        assert any(text in line for line in committed), text
    order = [line.split(" #")[1].split(" ", 1)[1].strip() for line in committed]
    first_forecast = next(i for i, line in enumerate(order) if "tool1-due" in line)
    first_threshold = next(i for i, line in enumerate(order) if "tool1-wear" in line)
    assert first_forecast < first_threshold
    cut = out.index("the network to the upstream is cut")
    back = out.index("the network is back")
    held = [line for line in committed if cut < out.index(line) < back]
    assert held, "nothing was committed while the network was down"
    for line in held:  # delivered only after the network came back
        seq = re.search(r" #(\d+) ", line)
        assert seq
        (arrived,) = [d for d in delivered if f"#{seq.group(1)} " in d]
        assert out.index(arrived) > back
