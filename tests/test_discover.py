"""``andon-agent discover opcua``: against the session's asyncua server carrying an OPC 40501 machine
tool built from the official NodeSets (tests/machinetool.py), and the pure parts with tables."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from agent.cli import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, main
from agent.cli.discover import machine_id, render
from agent.config import AlarmsRule, ToolLifeRule, load_config
from drivers.opcua.discover import Found, FoundSignal, FoundTool, signal_ids, tool_rule
from drivers.opcua.sim import SimCondition
from tests.machinetool import MILL_URI, MachineTool, build_machine_tool
from tests.opcua_fixtures import NS_URI, PASSWORD, USER, OpcuaSim, free_port


@pytest.fixture(scope="session")
async def machine_tool(opcua: OpcuaSim) -> AsyncIterator[MachineTool]:
    """The machine tool on the shared server, built once (importing the NodeSets takes 2-3 s)."""
    yield await build_machine_tool(opcua)


async def discover(*args: str) -> int:
    return await asyncio.to_thread(main, ["discover", "opcua", *args])


async def test_discover_writes_a_config_that_check_accepts(
    opcua: OpcuaSim, machine_tool: MachineTool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spindle = await opcua.server.nodes.objects.add_object(ua.NodeId("DiscoverSpindle", opcua.ns), "DiscoverSpindle")  # type: ignore[arg-type]
    await SimCondition.create(opcua.server, spindle, "Overheat", ua.NodeId("DiscoverSpindle.Overheat", opcua.ns))  # type: ignore[arg-type]
    out = tmp_path / "mill.toml"
    assert await discover(opcua.endpoint, "--output", str(out), "--id", "mill-2") == EXIT_OK
    summary = capsys.readouterr().err
    assert f"andon-agent: discover: wrote {out}: " in summary and "2 tool_life rule(s), an alarms rule" in summary

    text = out.read_text()
    doc = tomllib.loads(text)
    (machine,) = doc["machines"]
    assert (machine["id"], machine["protocol"], machine["endpoint"]) == ("mill-2", "opcua", opcua.endpoint)
    signals = {s["id"]: s for s in machine["signals"]}
    assert signals["Poll.Wear"]["node"] == f"nsu={NS_URI};s=Poll.Wear"  # by namespace URI
    assert signals["T1.ToolLife.Time"] == {
        "id": "T1.ToolLife.Time",
        "node": f"nsu={MILL_URI};s=Mill.T1.Time",
        "unit": "min",
    }
    assert '  [[machines.signals]]  # "Time": Number, min' in text
    assert '  [[machines.signals]]  # "Enum": Enumeration' in text
    assert "Server" not in signals and not any("ServerStatus" in s["node"] for s in machine["signals"])

    cfg = load_config(out)  # check's own loading
    rules = {r.id: r for r in cfg.rules}
    up, down = rules["tool-T1-Time"], rules["tool-T2-NumberOfUsages"]
    assert isinstance(up, ToolLifeRule) and isinstance(down, ToolLifeRule)
    assert (up.signal, up.limit, up.warning_remaining, up.direction) == ("T1.ToolLife.Time", 3600.0, 300.0, "up")
    assert (down.signal, down.limit, down.warning_remaining, down.direction) == (
        "T2.ToolLife.NumberOfUsages",
        0.0,
        50.0,
        "down",
    )
    assert "# T3 Length: no LimitValue on the server, so no tool_life rule (add `limit`)" in text
    assert isinstance(rules["alarms"], AlarmsRule) and rules["alarms"].source == "i=2253"

    assert await asyncio.to_thread(main, ["check", "--config", str(out)]) == EXIT_OK
    # every signal it wrote resolves on the server, through the driver (nsu= node ids included)
    assert await asyncio.to_thread(main, ["check", "--connect", "--config", str(out)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1] == "config OK, every OPC UA node resolves"


async def test_max_nodes_bounds_the_browse(
    opcua: OpcuaSim, machine_tool: MachineTool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await discover(opcua.endpoint, "--max-nodes", "5") == EXIT_OK
    out, err = capsys.readouterr()
    assert "# 5 signal(s) from 5 node(s) browsed; stopped at --max-nodes: the server has more" in out
    assert "5 node(s) browsed in" in err and "(stopped at --max-nodes)" in err
    assert len(tomllib.loads(out)["machines"][0]["signals"]) == 5


async def test_discover_cannot_connect_is_one_line_and_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/"
    assert await discover(endpoint, "--output", str(tmp_path / "x.toml"), "--timeout", "1s") == EXIT_FATAL
    err = capsys.readouterr().err
    assert err.startswith(f"andon-agent: discover: machine '127-0-0-1': cannot connect to {endpoint}")
    assert err.count("\n") == 1 and not (tmp_path / "x.toml").exists()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--security-mode", "Sign"], "--security-mode: `security_mode` needs a `security_policy` other than"),
        (["--password-env", "PW"], "--password-env: `password_env` needs `username`"),
        (["--max-nodes", "0"], "--max-nodes: must be at least 1"),
    ],
)
async def test_discover_bad_options_are_2(args: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await discover("opc.tcp://127.0.0.1:4840/", *args) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"andon-agent: discover: {problem}") and err.count("\n") == 1


async def test_discover_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "agent.toml"
    out.write_text("# hand-edited\n")
    assert await discover("opc.tcp://127.0.0.1:4840/", "--output", str(out)) == EXIT_CONFIG
    assert "exists and is never overwritten" in capsys.readouterr().err
    assert out.read_text() == "# hand-edited\n"


# -- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "ids"),
    [
        ([("Mill", "Spindle", "Load")], ["Mill.Spindle.Load"]),
        ([("Machines", "Mill", "Equipment", "Tools", "T1", "ToolLife", "Time")], ["T1.ToolLife.Time"]),
        ([("A", "Wear"), ("B", "Wear")], ["A.Wear", "B.Wear"]),
        ([("X", "Wear"), ("X", "Wear")], ["X.Wear", "X.Wear-2"]),
        ([("Achse 1", "Drehzahl [1/min]")], ["Achse_1.Drehzahl_1_min"]),
        ([("_hidden",)], ["hidden"]),
        ([("ÄÖÜ",)], ["signal"]),
        ([("x" * 80,)], ["x" * 60]),
        ([("-",)], ["signal"]),
    ],
)
def test_signal_ids(paths: list[tuple[str, ...]], ids: list[str]) -> None:
    assert signal_ids(paths) == ids


def _tool(**props: Any) -> FoundTool:
    return FoundTool("T1.ToolLife.Time", "T1", "Time", props)


@pytest.mark.parametrize(
    ("props", "rule", "what"),
    [
        (
            {"LimitValue": 3600.0, "WarningValue": 3300.0, "IsCountingUp": True, "StartValue": 0.0},
            {"kind": "tool_life", "limit": 3600.0, "direction": "up", "warning_remaining": 300.0},
            "tool T1 Time: counting up to 3600 from 0, warning at 3300 (from its ToolLife entry)",
        ),
        (
            {"LimitValue": 0, "WarningValue": 50, "IsCountingUp": False, "StartValue": 500},
            {"kind": "tool_life", "limit": 0.0, "direction": "down", "warning_remaining": 50.0},
            "tool T1 Time: counting down to 0 from 500, warning at 50 (from its ToolLife entry)",
        ),
        (
            {"LimitValue": 1000},  # IsCountingUp missing: the spec's default direction is up
            {"kind": "tool_life", "limit": 1000.0, "direction": "up"},
            "tool T1 Time: counting up to 1000 (from its ToolLife entry)",
        ),
        ({"IsCountingUp": True}, None, "T1 Time: no LimitValue on the server, so no tool_life rule (add `limit`)"),
        ({"LimitValue": True}, None, "T1 Time: no LimitValue on the server, so no tool_life rule (add `limit`)"),
    ],
)
def test_tool_rule(props: dict[str, Any], rule: dict[str, Any] | None, what: str) -> None:
    assert tool_rule(_tool(**props)) == (rule, what)


@pytest.mark.parametrize(
    ("endpoint", "mid"),
    [
        ("opc.tcp://mill-2:4840/", "mill-2"),
        ("opc.tcp://mill-2.plant.example:4840/UA/Server", "mill-2"),
        ("opc.tcp://192.168.10.40:4840", "192-168-10-40"),
        ("opc.tcp://[::1]:4840/", "1"),
        ("opc.tcp://user@plc/", "plc"),
    ],
)
def test_machine_id(endpoint: str, mid: str) -> None:
    assert machine_id(endpoint) == mid


def test_render_without_tools_or_alarms_is_a_valid_config(tmp_path: Path) -> None:
    found = Found("opc.tcp://plc:4840/", browsed=3, skipped=1)
    found.signals = [
        FoundSignal("Line.Speed", "nsu=urn:plc;s=Line.Speed", 'Speed "m/min"', "Double", "m/min"),
        FoundSignal("Line.Run", "nsu=urn:plc;i=7", "Run\nning", "Boolean"),
    ]
    machine = {"id": "plc", "protocol": "opcua", "endpoint": "opc.tcp://plc:4840/", "timeout": "5s"}
    text = render(found, machine, "andon-agent discover opcua opc.tcp://plc:4840/", datetime(2026, 1, 2, tzinfo=UTC))
    assert text.startswith("# Written by `andon-agent discover opcua opc.tcp://plc:4840/` on 2026-01-02T00:00:00Z.\n")
    assert "# 2 signal(s) from 3 node(s) browsed; 1 variable(s) left out" in text
    assert '  [[machines.signals]]  # "Speed "m/min"": Double, m/min' in text
    assert '  [[machines.signals]]  # "Run ning": Boolean' in text  # a name's line break stays out of the file
    assert "[[rules]]" not in text and "# [[sinks]]" in text
    path = tmp_path / "plc.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert [s.id for s in cfg.machines[0].signals] == ["Line.Speed", "Line.Run"] and cfg.rules == []


async def test_discover_with_security_and_a_user(
    opcua: OpcuaSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The machine's own security and user options, through the driver's connection code; they are
    written into the machine as given (the password itself never is)."""
    monkeypatch.setenv("DISCOVER_PW", PASSWORD)
    out = tmp_path / "secure.toml"
    args = [
        *("--security-policy", "Basic256Sha256", "--server-certificate", str(opcua.cert)),
        *("--username", USER, "--password-env", "DISCOVER_PW", "--state-dir", str(tmp_path / "state")),
    ]
    assert await discover(opcua.endpoint, "--output", str(out), *args) == EXIT_OK
    machine = tomllib.loads(out.read_text())["machines"][0]
    assert {k: machine[k] for k in ("security_policy", "server_certificate", "username", "password_env")} == {
        "security_policy": "Basic256Sha256",
        "server_certificate": str(opcua.cert),
        "username": USER,
        "password_env": "DISCOVER_PW",
    }
    assert PASSWORD not in out.read_text()
    assert (tmp_path / "state" / "opcua" / machine["id"] / "client-cert.der").is_file()  # made as run would
    monkeypatch.setenv("DISCOVER_PW", "wrong")
    assert await discover(opcua.endpoint, "--output", str(tmp_path / "no.toml"), *args) == EXIT_FATAL
    assert "andon-agent: discover: machine '127-0-0-1': cannot connect" in capsys.readouterr().err
