"""The command line: `check` and `run` exit statuses, output, and one-line config errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import EXIT_CONFIG, EXIT_OK, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.toml"
DEMO = ROOT / "config" / "demo.toml"

BAD_TOML = """\
[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"

  [[machines.signals]]
  id = "wear"
  address = 0
  type = "uint17"
"""


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """main() sets up logging on the root logger (to the captured stdout): undo it for the other tests."""
    names = ["", "pymodbus", "asyncua", "httpx", "httpcore"]
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in names}
    yield
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_TOML, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_andon_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANDON_CONFIG", raising=False)


def _assert_one_config_error_line(err: str, path: Path) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"andon-agent: config error: {path}: machines[0].signals[0].type: "), err
    assert lines[0].endswith("(got 'uint17')"), err


def test_check_example_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(EXAMPLE)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "gateway gw-press-line at plant-a, state in /var/lib/andon-agent"
    assert lines[-1] == "config OK"
    # machines
    assert "machine press-1: modbus tcp 192.168.10.21:502 unit 1, poll every 0.5s, offline after 5s" in lines
    assert "machine lathe-1: modbus rtu /dev/ttyUSB0 19200 E unit 3, poll every 2s, offline after 10s" in lines
    assert "machine mill-2: opcua opc.tcp://192.168.10.40:4840/, every 1s, offline after 10s" in lines
    # signals
    assert "  signal tool1_wear: holding 100 uint16 x0.1" in lines
    assert "  signal spindle_load: input 200 float32 CDAB -2.5" in lines
    assert "  signal tool_wear: node ns=2;s=Mill.Tool1.Wear" in lines
    # the Modbus reads each poll makes
    press = lines.index("  each poll makes 4 read(s):")
    assert lines[press + 1 : press + 5] == [
        "    holding 10..10 (1 register: spindle_fault)",
        "    holding 100..103 (4 registers: tool1_wear, strokes)",
        "    holding 300..307 (8 registers: program)",
        "    input 200..201 (2 registers: spindle_load)",
    ]
    assert "    coil 0..0 (1 bit: estop)" in lines
    assert "    discrete 4..4 (1 bit: door_open)" in lines
    # rules and sinks
    assert "rule tool1-wear: threshold on press-1/tool1_wear, warning 80 critical 95 deadband 1" in lines
    assert "rule spindle-fault: fault on press-1/spindle_fault, severity critical" in lines
    assert "rule tool3-life: tool_life on press-1/strokes, counting up to 50000, warning 5000 before" in lines
    assert "rule alarms: alarms of mill-2 (every condition its own alert), events of the Server object" in lines
    assert sum(line.startswith("rule ") for line in lines) == 12
    assert "sink upstream: http POST https://service.example.com/andon/alerts, token from $ANDON_TOKEN" in lines
    upstream = lines.index("sink upstream: http POST https://service.example.com/andon/alerts, token from $ANDON_TOKEN")
    assert lines[upstream + 1] == "  routing: min_severity info; machines: all; takes every event type"
    assert lines[upstream + 2 : upstream + 6] == [
        "sink phones: ntfy topic acme-service-plant-a on https://ntfy.example.com, token from $NTFY_TOKEN, "
        "click https://service.example.com/alerts/{alert}",
        "  routing: min_severity warning; machines: all; takes andon.alert.* and andon.test",
        "sink oncall: pagerduty Events API v2 https://events.pagerduty.com/v2/enqueue, "
        "routing key from $PD_ROUTING_KEY",
        "  routing: min_severity critical; machines: all; takes andon.alert.* and andon.test",
    ]


def test_check_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(DEMO)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "    holding 0..10 (11 registers: tool1_wear, strokes, spindle_fault)" in out.splitlines()


def test_check_bad_config_exits_2_with_one_line(bad_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(bad_config)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    _assert_one_config_error_line(err, bad_config)


def test_check_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nowhere.toml"
    assert main(["check", "-c", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"andon-agent: config error: {path}: cannot read: ")
    assert len(err.splitlines()) == 1


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ANDON_CONFIG", str(EXAMPLE))
    assert main(["check"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    assert "machine press-1: modbus tcp" in out
    assert out.endswith("config OK\n")


def test_config_option_wins_over_environment(
    bad_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANDON_CONFIG", str(bad_config))
    assert main(["check", "--config", str(EXAMPLE)]) == EXIT_OK
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["check", "run"])
def test_no_config_exits_2(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "andon-agent: config error: no config: pass --config PATH or set ANDON_CONFIG\n"


def test_run_with_bad_config_exits_2(bad_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(bad_config)]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""  # nothing started, nothing logged
    _assert_one_config_error_line(err, bad_config)


def test_python_m_agent_check_bad_config(bad_config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANDON_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "check", "--config", str(bad_config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    _assert_one_config_error_line(proc.stderr, bad_config)


def test_check_names_only_the_limits_a_threshold_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "one-limit.toml"
    cfg.write_text(
        '[[machines]]\nid = "m"\nprotocol = "modbus"\nhost = "127.0.0.1"\n'
        '[[machines.signals]]\nid = "load"\naddress = 0\n'
        '[[rules]]\nid = "hot"\nmachine = "m"\nsignal = "load"\nkind = "threshold"\ncritical = 22.5\n'
    )
    assert main(["check", "--config", str(cfg)]) == 0
    assert "rule hot: threshold on m/load, critical 22.5" in capsys.readouterr().out.splitlines()


def test_run_with_a_state_dir_it_cannot_create_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the state directory should be")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\nstate_dir = "{blocker}/state"\n[status]\nlisten = ""\n'
        '[[machines]]\nid = "m"\nprotocol = "modbus"\nhost = "127.0.0.1"\n'
        '[[machines.signals]]\nid = "s"\naddress = 0\n'
    )
    assert main(["run", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "cannot run:" in out and "Traceback" not in out
