"""``andon-agent send-test``: the real command (a process) against real receivers, with and without a
running agent on the same state directory; and ``andon-agent status`` against a running agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli.status import render, status_url
from agent.config import load_config
from agent.demo.receiver import Receiver, Reply
from drivers.modbus.sim import SimulatedMachine
from tests.logkeeping import kept_logging
from tests.waiting import Changes, of, running_agent

ROOT = Path(__file__).resolve().parent.parent


async def command(*args: str, within: float = 60.0) -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    async with asyncio.timeout(within):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


def write_config(path: Path, port: int, sinks: dict[str, str], *, listen: str = "") -> Path:
    text = f"""
[agent]
gateway_id = "gw-test"
state_dir = "{path.parent / "state"}"

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "50ms"
timeout = "300ms"

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
listen = "{listen}"
"""
    for sink_id, url in sinks.items():
        text += f'\n[[sinks]]\nid = "{sink_id}"\nkind = "http"\nurl = "{url}"\ntimeout = "1s"\nretry_max = "300ms"\n'
    path.write_text(text)
    return path


def sent_tests(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "andon.test"]


@pytest.fixture
async def locked_out() -> AsyncIterator[Receiver]:
    async with Receiver(lambda batch, headers: Reply(401)) as r:  # the token is wrong
        yield r


@pytest.fixture
async def self_signed(tmp_path: Path) -> AsyncIterator[str]:
    """An HTTPS server whose certificate nobody trusts (made here with openssl)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed for the TLS case"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1"]
    proc = await asyncio.create_subprocess_exec(
        openssl, *args, "-keyout", str(key), "-out", str(cert), stderr=asyncio.subprocess.DEVNULL
    )
    assert await proc.wait() == 0
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=ctx)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/alerts"
    finally:
        server.close()


def pending_seqs(state: Path, sink: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(state / "outbox.db")) as db:
        return [
            r[0]
            for r in db.execute("SELECT seq FROM events WHERE seq > (SELECT seq FROM cursors WHERE sink = ?)", (sink,))
        ]


async def test_without_an_agent_it_delivers_itself_and_says_why_a_sink_did_not_take_it(
    tmp_path: Path, receiver: Receiver, locked_out: Receiver, self_signed: str
) -> None:
    config = write_config(
        tmp_path / "agent.toml", 5020, {"up": receiver.url, "locked": locked_out.url, "tls": self_signed}
    )
    status, out, err = await command("send-test", "--config", str(config), "--timeout", "3")
    assert out[0].startswith("no agent runs on ") and "delivering the test event myself" in out[0], err
    verdicts = dict(line.split(": ", 1) for line in out[1:])
    assert verdicts["sink up"] == "accepted"
    assert verdicts["sink locked"].startswith("not accepted within 3s: HTTP 401")
    assert "CERTIFICATE_VERIFY_FAILED" in verdicts["sink tls"]
    assert status == 1
    [event] = sent_tests(receiver.events)
    assert (event["type"], event["subject"], event["specversion"]) == ("andon.test", "_gateway/test", "1.0")
    assert event["data"]["sinks"] == ["up", "locked", "tls"] and event["data"]["gateway"] == "gw-test"
    assert isinstance(event["data"]["seq"], int)
    state = tmp_path / "state"
    assert pending_seqs(state, "up") == [] and pending_seqs(state, "locked") == [event["data"]["seq"]]  # waits

    status, out, _ = await command("send-test", "--config", str(config), "--sink", "up")
    assert (status, out[-1]) == (0, "sink up: accepted")
    assert len(sent_tests(receiver.events)) == 2 and not sent_tests(locked_out.events)
    again = sent_tests(receiver.events)[1]
    assert again["data"]["seq"] > event["data"]["seq"] and again["data"]["sinks"] == ["up"]


async def test_an_unknown_sink_or_config_is_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", 5020, {"up": "http://127.0.0.1:9/alerts"})
    status, _, err = await command("send-test", "--config", str(config), "--sink", "nope")
    assert status == 2 and err.strip() == "andon-agent: config error: --sink nope: no sink with that id (sinks: up)"
    (tmp_path / "bad.toml").write_text("[agent]\nstate_dirr = 1\n")
    status, _, err = await command("send-test", "--config", str(tmp_path / "bad.toml"))
    assert status == 2 and "unknown key" in err


async def test_with_a_running_agent_it_asks_the_agent(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver, locked_out: Receiver
) -> None:
    """The agent holds the state directory: the command must not open the outbox itself; the agent
    commits the event (its seq follows the agent's own events, none reused) and its deliveries send it."""
    config = write_config(tmp_path / "agent.toml", machine.port, {"up": receiver.url, "locked": locked_out.url})
    cfg = load_config(config)
    changes = Changes()
    async with running_agent(cfg, changes=changes):
        await machine.set("holding", 10, [0b1000])
        await receiver.wait_for(lambda ev: of(ev, "m1/fault", "raised") != [])
        status, out, err = await command("send-test", "--config", str(config), "--timeout", "2")
        assert out[0].startswith("asking the running agent (pid ") and " agent)" in out[0], (out, err)
        assert out[1:] == ["sink up: accepted", out[2]] and out[2].startswith("sink locked: not accepted within 2s")
        assert "HTTP 401" in out[2] and status == 1
        await machine.set("holding", 10, [0])
        await receiver.wait_for(lambda ev: of(ev, "m1/fault", "cleared") != [])
    seqs = [e["data"]["seq"] for e in receiver.events]
    assert [e["type"] for e in receiver.events] == ["andon.alert.raised", "andon.test", "andon.alert.cleared"]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]  # one counter: the test event took the next seq


async def test_status_prints_the_running_agent_as_a_table(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver
) -> None:
    config = write_config(tmp_path / "agent.toml", machine.port, {"up": receiver.url}, listen="127.0.0.1:0")
    cfg = load_config(config)
    async with running_agent(cfg) as agent:
        await machine.set("holding", 10, [0b1000])
        await receiver.wait_for(lambda ev: of(ev, "m1/fault", "raised") != [])
        listen = f"127.0.0.1:{agent.status_port}"
        config.write_text(config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "{listen}"'))
        status, out, err = await command("status", "--config", str(config))
    assert status == 0, err
    assert out[0].startswith("gateway gw-test: healthy, up ")
    [m1] = [line for line in out if line.startswith("m1 ")]
    assert m1.split()[1] == "ok" and m1.split()[2].endswith("Z")
    [alert] = [line for line in out if line.startswith("m1/fault ")]
    assert "critical" in alert
    [up] = [line for line in out if line.startswith("up ")]
    assert up.split()[:4] == ["up", "up", "0", "1"]

    status, out, _ = await command("status", "--config", str(config))  # the agent has stopped
    assert status == 1 and out == [out[0]] and f"no agent answers at http://{listen}/status" in out[0]


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9108", "http://127.0.0.1:9108/status"),
        ("0.0.0.0:9108", "http://127.0.0.1:9108/status"),
        ("[::]:9108", "http://[::1]:9108/status"),
        (":9108", "http://127.0.0.1:9108/status"),
        ("192.168.10.5:80", "http://192.168.10.5:80/status"),
    ],
)
def test_status_url(listen: str, url: str) -> None:
    assert status_url(listen) == url


def test_render_table() -> None:
    doc: dict[str, Any] = {
        "gateway": "gw-press-line",
        "site": "plant-a",
        "uptime_seconds": 11_520.0,
        "healthy": False,
        "problems": ["machine lathe-2: no good read for 40s"],
        "machines": [
            {"id": "press-1", "connected": True, "offline": False, "healthy": True,
             "last_good_read": "2026-11-22T06:10:02.118Z", "errors": 0, "bad_signals": {}},
            {"id": "lathe-2", "connected": False, "offline": True, "healthy": True,
             "last_good_read": None, "errors": 12, "bad_signals": {"wear": "BadSensorFailure"}},
        ],
        "alerts": [
            {"alert": "press-1/tool1-wear", "severity": "warning", "since": "2026-11-22T06:00:00.000Z",
             "message": "tool1_wear on press-1 is 81.3%, at or over the warning limit 80%: plan service"
                        " at the next stop"},
        ],
        "outbox": {"events": 3, "bytes": 1590, "dropped": 0, "dead_letters": 1, "disk_full": False,
                   "oldest_event_age_seconds": 42.0},
        "sinks": [
            {"id": "upstream", "up": True, "pending": 0, "delivered": 1520, "last_error": None},
            {"id": "phones", "up": False, "pending": 3, "delivered": 12,
             "last_error": "HTTP 401: the upstream refuses the gateway's credentials (check the token)"},
        ],
    }  # fmt: skip
    assert render(doc).splitlines() == [
        "gateway gw-press-line at plant-a: UNHEALTHY, up 3h12m",
        "  problem: machine lathe-2: no good read for 40s",
        "",
        "MACHINE  STATE    LAST GOOD READ            ERRORS  BAD SIGNALS",
        "press-1  ok       2026-11-22T06:10:02.118Z  0       -",
        "lathe-2  OFFLINE  never                     12      wear (BadSensorFailure)",
        "",
        "ACTIVE ALERT        SEVERITY  SINCE                     MESSAGE",
        "press-1/tool1-wear  warning   2026-11-22T06:00:00.000Z  "
        "tool1_wear on press-1 is 81.3%, at or over the warning limit 80%: plan …",
        "",
        "outbox: 3 event(s), 1.6 kB, 0 dropped, 1 dead letter(s), oldest waiting 42s",
        "SINK      STATE    WAITING  DELIVERED  LAST ERROR",
        "upstream  up       0        1520       -",
        "phones    FAILING  3        12         "
        "HTTP 401: the upstream refuses the gateway's credentials (check the token)",
    ]


def test_status_without_a_listener_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    config = write_config(tmp_path / "agent.toml", 5020, {})
    with kept_logging():
        assert main(["status", "--config", str(config)]) == 1
    assert "status endpoints are off" in capsys.readouterr().out
