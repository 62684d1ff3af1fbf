"""Running unattended: status endpoints, systemd notify and watchdog, reload, the unit file and the image."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import Config, load_config
from agent.demo.receiver import DEFAULT_KEEP, Receiver, Reply
from agent.ops.logs import setup_logging
from agent.ops.notify import Notifier
from agent.sinks.http import HttpSinkConfig
from drivers.modbus.sim import SimulatedMachine
from tests.waiting import Changes, running_agent

ROOT = Path(__file__).resolve().parent.parent


def running(cfg: Config, changes: Changes | None = None, **kw: Any) -> Any:
    return running_agent(cfg, changes=changes, **kw)


# -- status endpoints ----------------------------------------------------------------------------


async def test_status_endpoints_during_a_run_and_an_offline_machine(
    receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    machine = SimulatedMachine()
    await machine.start()
    cfg = make_config(machine.port, receiver.url, status={"listen": "127.0.0.1:0"})
    changes = Changes()
    async with running(cfg, changes) as agent, httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{agent.status_port}"
        await machine.set("holding", 0, [900])
        await receiver.wait_for(lambda ev: any(e["subject"] == "m1/wear" for e in ev))
        async with asyncio.timeout(5):  # settled once the agent has the answer: nothing to await
            while agent.outbox is not None and agent.outbox.sync.stats().events:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        health = await http.get(f"{base}/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        status = (await http.get(f"{base}/status")).json()
        [m1] = status["machines"]
        assert (m1["id"], m1["connected"], m1["offline"], m1["healthy"]) == ("m1", True, False, True)
        assert m1["last_good_read"].endswith("Z") and m1["reads"] > 0
        assert [a["alert"] for a in status["alerts"]] == ["m1/wear"]
        assert status["sinks"][0]["id"] == "up" and status["sinks"][0]["up"] is True
        assert status["outbox"]["events"] == 0
        metrics = (await http.get(f"{base}/metrics")).text
        for line in (
            'andon_machine_connected{machine="m1"} 1.0',
            'andon_machine_offline{machine="m1"} 0.0',
            'andon_alerts_active{severity="warning"} 1.0',
            'andon_sink_up{sink="up"} 1.0',
            "andon_outbox_events 0.0",
            "andon_healthy 1.0",
        ):
            assert line in metrics, line
        assert 'andon_poll_duration_seconds_count{machine="m1"}' in metrics

        await machine.stop()
        await changes.until(lambda: agent.alerts is not None and "m1/offline" in agent.alerts.active)
        health = await http.get(f"{base}/healthz")
        assert health.status_code == 200  # a machine marked offline is an honest state, not a sick agent
        status = (await http.get(f"{base}/status")).json()
        assert status["machines"][0]["offline"] is True and status["machines"][0]["connected"] is False
        assert status["machines"][0]["last_error"]
        assert 'andon_machine_offline{machine="m1"} 1.0' in (await http.get(f"{base}/metrics")).text
        assert (await http.get(f"{base}/nope")).status_code == 404
        assert (await http.post(f"{base}/status")).status_code == 405


async def test_healthz_fails_while_the_outbox_cannot_be_written(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(machine.port, receiver.url, status={"listen": "127.0.0.1:0"})
    async with running(cfg) as agent, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{agent.status_port}/healthz"
        assert agent.outbox is not None
        db = agent.outbox.sync.db
        # The disk turns read-only (what the kernel does to a failing SD card): commits fail.
        await agent.outbox.call(db.execute, "PRAGMA query_only = ON")
        await machine.set("holding", 10, [0b1000])
        runner = agent.machines[0]
        while runner.outbox_error is None:  # the commit fails on the next poll
            await machine.wait_requests(1)
        health = await http.get(url)
        assert health.status_code == 503 and "events cannot be committed" in health.text
        await agent.outbox.call(db.execute, "PRAGMA query_only = OFF")  # writable again
        await receiver.wait_for(lambda ev: [e["subject"] for e in ev] == ["m1/fault"])
        assert (await http.get(url)).status_code == 200


async def test_an_endpoint_that_refuses_everything_shows_in_healthz_and_metrics(
    machine: SimulatedMachine, make_config: Callable[..., Config]
) -> None:
    answer = {"status": 404}  # a mistyped path, or the ingress route missing during a deploy
    async with Receiver(lambda batch, headers: Reply(answer["status"])) as r:
        cfg = make_config(machine.port, r.url, status={"listen": "127.0.0.1:0"})
        async with running(cfg) as agent, httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{agent.status_port}"
            await machine.set("holding", 10, [0b1000])  # the fault trips: one event to send
            [delivery] = agent.deliveries
            await r.wait_for(lambda _: delivery.refused == 404 and len(r.requests) >= 2)
            health = await http.get(f"{base}/healthz")
            assert health.status_code == 503
            assert "sink up: the endpoint refuses every request: HTTP 404" in health.text
            metrics = (await http.get(f"{base}/metrics")).text
            for line in ('andon_sink_refused{sink="up"} 1.0', 'andon_sink_up{sink="up"} 0.0', "andon_healthy 0.0"):
                assert line in metrics, line
            [sink] = (await http.get(f"{base}/status")).json()["sinks"]
            assert sink["refused"] == 404 and sink["held"] is False and sink["pending"] == 1
            assert agent.outbox is not None and agent.outbox.sync.stats().dead_letters == 0  # nothing set aside
            answer["status"] = 200  # the route is back
            await machine.set("holding", 10, [0])  # a second event: sent only once the first is settled
            await r.wait_for(lambda got: [e["type"].rsplit(".", 1)[1] for e in got] == ["raised", "cleared"])
            async with asyncio.timeout(5):  # the agent settles once the answer is in: nothing to await
                while delivery.refused is not None:  # noqa: ASYNC110 - the delivery loop has no event for it
                    await asyncio.sleep(0.01)
            assert (await http.get(f"{base}/healthz")).status_code == 200
            assert 'andon_sink_refused{sink="up"} 0.0' in (await http.get(f"{base}/metrics")).text


# -- systemd notify and watchdog -------------------------------------------------------------------


SO_TIMESTAMPNS = 35  # Linux: the kernel stamps each datagram on arrival (SCM_TIMESTAMPNS has the same value)


class FakeSystemd:
    """A NOTIFY_SOCKET that records (arrival time, message). The kernel stamps each datagram when it
    arrives (wall clock), so the record is exact even while the agent's event loop is blocked."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
                [(sec, nsec)] = [struct.unpack("qq", raw[:16]) for _, kind, raw in ancillary if kind == SO_TIMESTAMPNS]
                self.messages.append((sec + nsec / 1e9, data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m == "WATCHDOG=1"]


def test_notifier_reads_systemd_environment(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_interval == 1.0
    other = Notifier.from_env({"NOTIFY_SOCKET": "x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process
    assert not Notifier.from_env({}).enabled
    Notifier(None).send(READY="1")  # outside systemd: nothing happens


async def test_ready_then_watchdog_pings_stop_while_the_loop_is_blocked(
    tmp_path: Path, machine: SimulatedMachine, make_config: Callable[..., Config]
) -> None:
    systemd = FakeSystemd(tmp_path / "notify.sock")
    notifier = Notifier(systemd.path, watchdog_usec=100_000)  # a ping every 50 ms
    try:
        async with running(make_config(machine.port), notifier=notifier) as agent:
            assert agent.started.is_set()
            while len(systemd.pings()) < 3:
                await machine.wait_requests(1)
            blocked_from = time.time()
            time.sleep(0.6)  # noqa: ASYNC251 - the event loop is stuck on purpose: no pings may go out
            blocked_until = time.time()
            while not [t for t in systemd.pings() if t > blocked_until]:
                await machine.wait_requests(1)
        assert systemd.messages[0][1].startswith("READY=1\nSTATUS=watching 1 machine(s)")
        assert any(m.startswith("STOPPING=1") for _, m in systemd.messages)
        pings = systemd.pings()
        assert [t for t in pings if blocked_from < t < blocked_until] == []  # silent while the loop is stuck
        assert len([t for t in pings if t < blocked_from]) >= 3  # pinging before...
        assert [t for t in pings if t > blocked_until]  # ...and again once the loop runs
    finally:
        notifier.close()
        systemd.close()


# -- reload ----------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def agent_toml(state: Path, port: int, url: str, *, machines: list[str], fault_rule: bool = True) -> str:
    out = f'[agent]\ngateway_id = "gw"\nstate_dir = "{state}"\n[status]\nlisten = ""\n'
    for mid in machines:
        out += f"""
[[machines]]
id = "{mid}"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "50ms"
timeout = "300ms"
  [[machines.signals]]
  id = "wear"
  address = 0
  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3
[[rules]]
id = "{mid}-wear"
machine = "{mid}"
signal = "wear"
kind = "threshold"
warning = 80
"""
        if fault_rule:
            out += f'[[rules]]\nid = "{mid}-fault"\nmachine = "{mid}"\nsignal = "fault"\nkind = "fault"\n'
    return out + f'[[sinks]]\nid = "up"\nkind = "http"\nurl = "{url}"\nretry_max = "300ms"\n'


async def test_reload_starts_and_changes_machines_and_keeps_alert_state(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "agent.toml", agent_toml(tmp_path / "s", machine.port, receiver.url, machines=["a"]))
    await machine.set("holding", 0, [90])
    await machine.set("holding", 10, [0b1000])
    async with running(load_config(path), config_path=path) as agent:
        await receiver.wait_for(lambda ev: {e["subject"] for e in ev} == {"a/a-wear", "a/a-fault"})
        # New file: machine b added, machine a's fault rule removed, its wear rule unchanged.
        write(path, agent_toml(tmp_path / "s", machine.port, receiver.url, machines=["a", "b"], fault_rule=False))
        agent.reload_done.clear()
        agent.request_reload()
        await agent.reload_done.wait()
        assert agent.reloads == 1 and sorted(r.machine.id for r in agent.machines) == ["a", "b"]
        await receiver.wait_for(lambda ev: any(e["subject"] == "b/b-wear" for e in ev))
        await receiver.wait_for(
            lambda ev: any(e["subject"] == "a/a-fault" and e["type"].endswith("cleared") for e in ev)
        )
        await machine.wait_requests(10)
        # Invalid file: refused with one log line, the running config stays.
        write(path, "[agent]\nstate_dir = 5\n")
        agent.reload_done.clear()
        with caplog.at_level(logging.ERROR, logger="andon.runtime"):
            agent.request_reload()
            await agent.reload_done.wait()
        refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
        assert len(refused) == 1 and "agent.toml" in refused[0] and "\n" not in refused[0]
        assert agent.reloads == 1 and len(agent.machines) == 2
        await machine.wait_requests(4)
    raised = [e["subject"] for e in receiver.events if e["type"] == "andon.alert.raised"]
    assert raised.count("a/a-wear") == 1  # the unchanged rule's alert was not raised again
    assert sorted(raised) == ["a/a-fault", "a/a-wear", "b/b-wear"]


async def test_reload_applies_changed_alerts_settings_to_unchanged_machines(
    tmp_path: Path, machine: SimulatedMachine, receiver: Receiver
) -> None:
    def config(flood_count: int) -> str:
        text = agent_toml(tmp_path / "s", machine.port, receiver.url, machines=["a"])
        return text + f'[alerts]\nflood_count = {flood_count}\nflood_window = "1m"\n'

    path = write(tmp_path / "agent.toml", config(0))  # floods are not summarised
    await machine.set("holding", 0, [0])
    await machine.set("holding", 10, [0])
    async with running(load_config(path), config_path=path) as agent:
        await machine.wait_requests(2)
        write(path, config(1))  # only [alerts] changes: the machine itself is the same
        agent.reload_done.clear()
        agent.request_reload()
        await agent.reload_done.wait()
        assert agent.reloads == 1 and agent.cfg.alerts.flood_count == 1
        await machine.set("holding", 0, [90])
        await machine.set("holding", 10, [0b1000])  # a second raise: a flood at flood_count = 1
        await receiver.wait_for(lambda ev: any(e["subject"] == "a/flood" for e in ev))
    raised = [e["subject"] for e in receiver.events if e["type"] == "andon.alert.raised"]
    assert raised[0] in ("a/a-wear", "a/a-fault") and "a/flood" in raised


# -- the unit file and the image -----------------------------------------------------------------


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (.ci/run installs systemd)"
    exe = shutil.which("andon-agent") or str(Path(sys.executable).parent / "andon-agent")
    unit = (ROOT / "systemd/andon-agent.service").read_text()
    assert "/opt/andon-agent/bin/andon-agent" in unit
    rendered = write(tmp_path / "andon-agent.service", unit.replace("/opt/andon-agent/bin/andon-agent", exe))
    result = subprocess.run([analyze, "verify", str(rendered)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for key in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "StateDirectory=andon-agent",
        "ConfigurationDirectory=andon-agent",
        "LoadCredential=token:",
        "SupplementaryGroups=dialout",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
    ):
        assert key in unit, key


def test_the_unit_allows_the_serial_ports_of_common_gateways() -> None:
    """USB adapters, the Pi's UARTs, PC UARTs, RS-485 HATs (SC16IS7xx: ttySC) and i.MX gateways (ttymxc)."""
    unit = (ROOT / "systemd/andon-agent.service").read_text()
    allowed = {line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("DeviceAllow=")}
    assert "DevicePolicy=closed" in unit
    for group in ("ttyUSB", "ttyACM", "ttyAMA", "ttyS", "ttySC", "ttymxc"):
        assert f"char-{group} rw" in allowed, group


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text and "HEALTHCHECK" in text and "VOLUME" in text
    assert "\nUSER 10001" in text  # never root


# -- logs ------------------------------------------------------------------------------------------


async def test_the_token_never_reaches_the_logs(
    machine: SimulatedMachine,
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cr3t-t0ken-value"
    monkeypatch.setenv("ANDON_TEST_TOKEN", secret)
    seen: list[str] = []

    def refuse(batch: list[dict[str, Any]], headers: dict[str, str]) -> Reply:
        seen.append(headers.get("authorization", ""))
        return Reply(401)  # the upstream refuses the credentials: the agent logs that, loudly

    async with Receiver(refuse) as upstream:
        cfg = make_config(machine.port)
        sink = {"id": "up", "kind": "http", "url": upstream.url, "token_env": "ANDON_TEST_TOKEN", "retry_max": "200ms"}
        cfg = cfg.model_copy(update={"sinks": [HttpSinkConfig.model_validate(sink)]})
        with caplog.at_level(logging.DEBUG):
            async with running(cfg):
                await machine.set("holding", 10, [0b1000])
                while len(seen) < 2:
                    await machine.wait_requests(1)
    assert seen[0] == f"Bearer {secret}"  # it was sent...
    assert any("401" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if secret in r.getMessage()]  # ...and never logged


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", json_format=True)
        logging.getLogger("andon.test").warning("machine %s is %s", "m1", "offline")
        line = capsys.readouterr().out.strip()
        record = json.loads(line)
        assert record["level"] == "warning" and record["logger"] == "andon.test"
        assert record["message"] == "machine m1 is offline" and "\n" not in line
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


async def test_a_taken_status_port_does_not_stop_the_alerting(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cfg = make_config(machine.port, receiver.url, status={"listen": f"127.0.0.1:{port}"})
        with caplog.at_level(logging.ERROR, logger="andon.runtime"):
            async with running(cfg) as agent:
                await machine.set("holding", 10, [0b1000])
                await receiver.wait_for(lambda ev: [e["subject"] for e in ev] == ["m1/fault"])
                assert agent.status_port is None
        assert any("status endpoints are off" in r.getMessage() for r in caplog.records)
    finally:
        taken.close()


# -- the demo receiver -------------------------------------------------------------------------------


async def test_the_receiver_keeps_only_the_last_events() -> None:
    """The demo may run for weeks: its receiver must not keep every event (nor every request)."""
    seen: list[int] = []
    async with Receiver(keep=5, on_event=lambda e: seen.append(e["n"])) as r, httpx.AsyncClient() as http:
        for n in range(0, 12, 3):
            batch = [{"n": n}, {"n": n + 1}, {"n": n + 2}]
            assert (await http.post(r.url, json=batch)).status_code == 200
        assert [e["n"] for e in r.events] == [7, 8, 9, 10, 11] and len(r.requests) == 4
        assert r.accepted == 12 and seen == list(range(12))
    assert Receiver().keep == DEFAULT_KEEP and DEFAULT_KEEP is not None  # bounded by default


def test_nothing_cites_a_contract_file_the_project_does_not_have() -> None:
    """The public contract is the README (and config/example.toml); comments must point there."""
    name = "CONTRACT" + ".md"
    assert not (ROOT / name).exists()
    files = [
        p for d in ("agent", "drivers", "tests", "bench", "docs", "systemd", "config") for p in (ROOT / d).rglob("*")
    ]
    files += [ROOT / "README.md", ROOT / "Dockerfile", ROOT / "pyproject.toml"]
    citing = [str(p.relative_to(ROOT)) for p in files if p.is_file() and name in p.read_text(errors="replace")]
    assert citing == []
