"""The OPC UA stack is optional (the ``opcua`` extra). Without it, every command that would use an OPC UA
machine (``check``, ``check --connect``, ``run``, a reload) says in one line which machine needs it and
exactly what to install, and nothing starts (``discover`` says the same line); Modbus works as before.

The missing package is real, not a mock of the agent: the agent runs as a subprocess whose
``sitecustomize`` puts a finder in front of ``sys.meta_path`` that refuses to import the named top-level
packages, as if pip had never installed them (asyncua: ``pip install`` without the extra; _cffi_backend:
cryptography present but cffi's native part missing, what a failed cffi build on 32-bit ARM leaves).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess

ROOT = Path(__file__).resolve().parent.parent

BLOCKER = """\
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


MODBUS = """
[agent]
gateway_id = "gw-opt"
state_dir = "{state}"

[status]
listen = ""

[[machines]]
id = "press"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
timeout = "200ms"

  [[machines.signals]]
  id = "wear"
  address = 0
"""

OPCUA = """
[[machines]]
id = "mill"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/"

  [[machines.signals]]
  id = "wear"
  node = "ns=2;s=Mill.Wear"
"""


def _config(tmp_path: Path, *, opcua: bool) -> Path:
    path = tmp_path / "agent.toml"
    text = MODBUS.format(state=tmp_path / "state", port=_closed_port())
    path.write_text(text + (OPCUA.format(port=_closed_port()) if opcua else ""), encoding="utf-8")
    return path


def _site(tmp_path: Path, *blocked: str) -> str:
    """A directory for PYTHONPATH whose sitecustomize makes ``blocked`` impossible to import."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(blocked)), encoding="utf-8")
    return str(site)


def _agent(tmp_path: Path, args: list[str], *blocked: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": _site(tmp_path, *blocked)},
        timeout=60,
    )


PROBLEM = (
    "machines[1].protocol: machine 'mill' needs the OPC UA stack, which is not installed here "
    "(No module named '{missing}'): run `sudo ./systemd/install.sh --opcua` from the source, or "
    f"`{sys.executable} -m pip install 'andon-agent[opcua]'` "
    '(on 32-bit ARM pip then needs a C compiler for cffi: README, "OPC UA on 32-bit ARM")'
)


@pytest.mark.parametrize("connect", [False, True])
def test_check_names_the_machine_and_what_to_install_and_exits_2(tmp_path: Path, connect: bool) -> None:
    """``check`` shows the plan, then the one line (a readiness error: ``run`` would not start)."""
    config = _config(tmp_path, opcua=True)
    out = _agent(tmp_path, ["check", *(["--connect"] if connect else []), "--config", str(config)], "asyncua")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert "machine mill: opcua opc.tcp://127.0.0.1:" in out.stdout  # the plan is still shown
    assert [line for line in lines if line.startswith("error: ")] == ["error: " + PROBLEM.format(missing="asyncua")]
    assert lines[-1].startswith("config valid, but `run` would not start")


def test_run_names_the_machine_and_what_to_install_and_exits_2(tmp_path: Path) -> None:
    out = _agent(tmp_path, ["run", "--config", str(_config(tmp_path, opcua=True))], "asyncua")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == ["andon-agent: config error: " + PROBLEM.format(missing="asyncua")]
    assert not (tmp_path / "state").exists()  # nothing started


def test_a_broken_stack_is_named_too(tmp_path: Path) -> None:
    """asyncua and cryptography present, cffi's native module not: the import that failed is named."""
    out = _agent(tmp_path, ["run", "--config", str(_config(tmp_path, opcua=True))], "_cffi_backend")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.splitlines() == ["andon-agent: config error: " + PROBLEM.format(missing="_cffi_backend")]


def test_discover_says_what_to_install_and_exits_1(tmp_path: Path) -> None:
    """``discover`` on a Modbus-only installation: the same line as ``check`` and ``run``, no machine."""
    out_file = tmp_path / "mill.toml"
    endpoint = f"opc.tcp://127.0.0.1:{_closed_port()}/"
    out = _agent(tmp_path, ["discover", "opcua", endpoint, "--output", str(out_file)], "asyncua")
    assert out.returncode == 1, out.stdout + out.stderr
    problem = PROBLEM.format(missing="asyncua").split("needs the OPC UA stack, which is ", 1)[1]
    assert out.stderr.splitlines() == ["andon-agent: discover: the OPC UA stack is " + problem]
    assert out.stdout == "" and not out_file.exists()


def test_modbus_needs_no_opcua_stack(tmp_path: Path) -> None:
    out = _agent(tmp_path, ["check", "--config", str(_config(tmp_path, opcua=False))], "asyncua", "cryptography")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.endswith("config OK\n")
    assert "machine press: modbus tcp 127.0.0.1:" in out.stdout


async def test_a_reload_that_adds_an_opcua_machine_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, opcua=False)
    monkeypatch.setenv("PYTHONPATH", _site(tmp_path, "asyncua"))  # the agent process's environment
    agent = AgentProcess(config)
    await agent.start()
    await agent.wait_line(" started: 1 machine(s)")
    config.write_text(config.read_text() + OPCUA.format(port=_closed_port()), encoding="utf-8")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    await agent.wait_line("reload refused")
    refused = next(line for line in agent.lines if "reload refused" in line)
    expected = "reload refused, the running config stays: " + PROBLEM.format(missing="asyncua")
    assert refused.rstrip("\n").endswith(expected), refused
    assert await agent.signal(signal.SIGTERM) == 0, "".join(agent.lines)
    assert "Traceback" not in "".join(agent.lines)
