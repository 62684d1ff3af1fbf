"""The agent as a real ``python -m agent run`` process, for tests that kill and restart it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, state: Path, port: int, url: str) -> Path:
    path.write_text(f"""
[agent]
gateway_id = "gw-proc"
state_dir = "{state}"

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval = "50ms"
timeout = "300ms"

  [[machines.signals]]
  id = "wear"
  address = 0
  scale = 0.1
  unit = "%"

  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3

[[rules]]
id = "wear"
machine = "m1"
signal = "wear"
kind = "threshold"
warning = 80
critical = 95

[[rules]]
id = "fault"
machine = "m1"
signal = "fault"
kind = "fault"

[status]
listen = ""

[[sinks]]
id = "up"
kind = "http"
url = "{url}"
retry_max = "300ms"
""")
    return path


class AgentProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            str(self.config),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    async def wait_line(self, text: str, count: int = 1, within: float = 10.0) -> None:
        """Read the agent's log until ``count`` lines containing ``text`` were seen."""
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(within):
            while sum(text in line for line in self.lines) < count:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError("agent exited:\n" + "".join(self.lines))
                self.lines.append(raw.decode())

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(15):
            if self.proc.stdout is not None:
                self.lines += [line.decode() for line in (await self.proc.stdout.read()).splitlines(True)]
            return await self.proc.wait()
