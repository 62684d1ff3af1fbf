"""The board, acknowledgement and the stack light with the whole agent: a simulated press (pymodbus
server), a real receiver upstream, a real tower (another pymodbus server), one listener for the
board and the status endpoints, and the page in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import Config
from agent.demo.receiver import Receiver
from agent.errors import ConfigError
from agent.ops.lights import Lamps
from agent.pipeline.supervisor import Agent
from drivers.modbus.sim import SimulatedMachine
from tests.agent_process import ROOT, write_config
from tests.board_helpers import Browser
from tests.waiting import Changes, of, running

TOKEN = "ack-token-for-the-agent-tests"

LIGHT = {
    "id": "tower-1",
    "protocol": "modbus",
    "host": "127.0.0.1",
    "write": True,
    "timeout": "300ms",
    "red": {"address": 0},
    "yellow": {"address": 1},
    "green": {"address": 2},
    "blue": {"address": 3},
    "buzzer": {"address": 4},
}


@pytest.fixture
def ack_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ANDON_TEST_ACK_TOKEN", TOKEN)
    return "ANDON_TEST_ACK_TOKEN"


def board_config(make_config: Callable[..., Config], port: int, url: str, **sections: Any) -> Config:
    status = {"listen": "127.0.0.1:0", **sections.pop("status", {})}
    return make_config(port, url, status=status, **sections)


async def tower_lamps(tower: SimulatedMachine) -> Lamps:
    return Lamps(*(bool(b) for b in await tower.get("coil", 0, 5)))


async def until_tower(tower: SimulatedMachine, want: Lamps, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while await tower_lamps(tower) != want:
            await tower.wait_replies(1)


@contextlib.asynccontextmanager
async def board_events(http: httpx.AsyncClient) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    async with http.stream("GET", "/api/events") as r:

        async def boards() -> AsyncIterator[dict[str, Any]]:
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "board":
                    yield json.loads(line[6:])["board"]

        yield boards()


async def next_board(boards: AsyncIterator[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async with asyncio.timeout(2):  # the board follows a commit within 2 s
        while not test(board := await anext(boards)):
            pass
    return board


def m1(board: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in board["machines"] if m["id"] == "m1")
    return found


async def test_one_listener_serves_board_api_and_status(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config], ack_env: str
) -> None:
    cfg = board_config(make_config, machine.port, receiver.url, status={"ack_token_env": ack_env})
    async with running(cfg) as agent:
        assert agent.status_port is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.status_port}") as http:
            assert (await http.get("/healthz")).text == "ok\n"
            assert "andon_machine_connected" in (await http.get("/metrics")).text
            assert (await http.get("/status")).json()["machines"][0]["id"] == "m1"
            assert (await http.get("/")).headers["content-type"].startswith("text/html")
            board = (await http.get("/api/board")).json()
            assert board["ack"] is True and board["gateway"] == "gw-test"
            assert [(m["id"], m["state"], m["connected"]) for m in board["machines"]] == [("m1", "ok", True)]


async def test_board_follows_commits_and_an_acknowledgement_goes_upstream_and_survives_a_restart(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config], ack_env: str
) -> None:
    cfg = board_config(make_config, machine.port, receiver.url, status={"ack_token_env": ack_env})
    async with (
        running(cfg) as agent,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.status_port}") as http,
        board_events(http) as boards,
    ):
        await next_board(boards, lambda b: m1(b)["state"] == "ok")
        await machine.set("holding", 10, [0b1000])  # the spindle faults
        board = await next_board(boards, lambda b: m1(b)["state"] == "critical")
        (fault,) = m1(board)["alerts"]
        assert (fault["alert"], fault["ack"]) == ("m1/fault", None)
        r = await http.post(
            "/api/alerts/m1/fault/ack",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            json={"by": "Ana", "note": "resetting the drive"},
        )
        assert r.status_code == 200, r.text
        board = await next_board(boards, lambda b: m1(b)["alerts"][0]["ack"] is not None)
        assert m1(board)["alerts"][0]["ack"]["by"] == "Ana"
        await receiver.wait_for(lambda ev: any(e["type"] == "andon.alert.acknowledged" for e in ev))
        (acked,) = [e for e in receiver.events if e["type"] == "andon.alert.acknowledged"]
        (raised,) = of(receiver.events, "m1/fault", "raised")
        assert acked["subject"] == "m1/fault" and acked["data"]["seq"] > raised["data"]["seq"]
        assert (acked["data"]["by"], acked["data"]["note"], acked["data"]["severity"]) == (
            "Ana",
            "resetting the drive",
            "critical",
        )
        assert acked["data"]["message"] == raised["data"]["message"]
        assert (acked["data"]["machine"], acked["data"]["rule"], acked["data"]["signal"]) == ("m1", "fault", "fault")
    async with running(cfg) as agent:  # the acknowledgement is kept with the alert state
        assert agent.alerts is not None
        again = agent.alerts.active["m1/fault"]
        assert again.acknowledged and again.ack_by == "Ana" and again.ack_note == "resetting the drive"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.status_port}") as http:
            assert m1((await http.get("/api/board")).json())["alerts"][0]["ack"]["by"] == "Ana"


async def test_the_tower_follows_the_alerts_and_the_acknowledgement(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config], ack_env: str
) -> None:
    async with SimulatedMachine(registers=4) as tower:
        cfg = board_config(
            make_config,
            machine.port,
            receiver.url,
            status={"ack_token_env": ack_env},
            lights=[{**LIGHT, "port": tower.port}],
        )
        async with running(cfg) as agent:
            await until_tower(tower, Lamps(green=True))
            await machine.set("holding", 0, [850])  # wear 85 %: a warning
            await until_tower(tower, Lamps(yellow=True))
            await machine.set("holding", 10, [0b1000])  # and a fault
            await until_tower(tower, Lamps(red=True, buzzer=True))
            assert agent.alerts is not None and await agent.alerts.acknowledge("m1/fault", "Ana", None)
            await until_tower(tower, Lamps(red=True))  # acknowledged: the buzzer stops
            await machine.stop()  # the press is unplugged
            await until_tower(tower, Lamps(red=True, blue=True), within=5)
            await machine.start()
            await machine.set("holding", 0, [100])
            await machine.set("holding", 10, [0])
            await until_tower(tower, Lamps(green=True), within=5)
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.status_port}") as http,
                board_events(http) as boards,
            ):  # the board shows the tower too
                board = await next_board(boards, lambda b: b["lights"][0]["shows"] == "green")
                assert board["lights"] == [{"id": "tower-1", "shows": "green", "up": True, "error": None}]


async def test_a_tower_that_does_not_answer_never_delays_alerting(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    async with SimulatedMachine(registers=4) as dead:
        dead.dead.add(1)  # connects, then never answers (a tower that hangs)
        lights = [{**LIGHT, "port": dead.port}, {**LIGHT, "id": "tower-2", "port": unused_tcp_port}]
        cfg = board_config(make_config, machine.port, receiver.url, lights=lights)
        changes = Changes()
        async with running(cfg, changes) as agent:
            for n in range(3):
                await machine.set("holding", 10, [0b1000 if n % 2 == 0 else 0])
                loop = asyncio.get_running_loop()
                started = loop.time()
                want = n + 1
                await receiver.wait_for(lambda ev: len(ev) == want, within=3)  # noqa: B023 (awaited here)
                assert loop.time() - started < 1.0  # poll 50 ms: the towers' timeouts never get in the way
            assert agent.surface.lights is not None
            assert all(light.shown is None for light in agent.surface.lights.lights)


async def test_a_missing_ack_token_is_a_config_error_naming_the_key(
    machine: SimulatedMachine, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANDON_NO_SUCH_TOKEN", raising=False)
    cfg = board_config(make_config, machine.port, "", status={"ack_token_env": "ANDON_NO_SUCH_TOKEN"})
    with pytest.raises(ConfigError, match=r"^status\.ack_token_env: environment variable ANDON_NO_SUCH_TOKEN"):
        await Agent(cfg).run(asyncio.Event())


async def test_the_page_follows_the_real_agent(
    browser: Browser, machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = board_config(make_config, machine.port, receiver.url)
    async with running(cfg) as agent:
        await browser.open(f"http://127.0.0.1:{agent.status_port}/")
        await browser.until("return document.querySelector('[data-machine=\"m1\"]')")
        assert await browser.js("return document.querySelectorAll('button.ack').length") == 0  # no token: read-only
        await machine.set("holding", 0, [960])
        await browser.until('return document.querySelector(\'[data-alert="m1/wear"][data-severity="critical"]\')')
        await machine.set("holding", 0, [100])
        await browser.until("return !document.querySelector('[data-alert=\"m1/wear\"]')")
        assert await browser.js("return document.querySelector('[data-machine=\"m1\"]').dataset.state") == "ok"
        svg = await browser.js(
            "return fetch('/api/machines/m1/history.svg').then(r => r.text())"
        )  # the time line has the stretch of the alert that just ended
        assert "m1/wear" in svg
        await browser.open("about:blank")


# The command line with a note, at exit, of which optional libraries the process loaded.
IMPORTS_PROBE = """
import atexit, sys
WATCH = ("uvicorn", "starlette", "click", "pygments", "trio", "httpx._main", "pymodbus")
atexit.register(lambda: print("LOADED", *[m for m in WATCH if sys.modules.get(m) is not None], flush=True))
from agent.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


@pytest.mark.parametrize(("listen", "loaded"), [("", set()), ("127.0.0.1:0", {"uvicorn", "starlette", "click"})])
async def test_the_web_framework_is_loaded_only_with_a_listener_and_the_agent_still_reconnects_and_stops(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver, listen: str, loaded: set[str]
) -> None:
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "state", machine.port, receiver.url)
    cfg.write_text(cfg.read_text().replace('listen = ""', f'listen = "{listen}"'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        IMPORTS_PROBE,
        str(cfg),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def until_line(text: str) -> None:
        async with asyncio.timeout(20):
            while not any(text in line for line in lines):
                raw = await proc.stdout.readline()  # type: ignore[union-attr]
                assert raw, "".join(lines)
                lines.append(raw.decode())

    await until_line("andon board on http://127.0.0.1:" if listen else "started")
    await machine.stop()  # the machine goes away: the agent backs off (retry sleeps) and reconnects
    await until_line("reconnecting")
    await machine.start()
    await until_line("reading again")
    proc.send_signal(signal.SIGTERM)  # the agent's handler, not uvicorn's
    async with asyncio.timeout(15):
        lines += (await proc.stdout.read()).decode().splitlines()
        assert await proc.wait() == 0, "".join(lines)
    (note,) = [line for line in lines if line.startswith("LOADED")]
    assert set(note.split()[1:]) == loaded, note  # never trio nor httpx's command line; pymodbus: not for TCP
    assert any("stopped" in line for line in lines)
