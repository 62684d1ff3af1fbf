"""``andon-agent send-test`` (the real command, a process) proves the ntfy and PagerDuty uplinks:
against the fake services on 127.0.0.1, with no agent running."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fake_services import FakeNtfy, FakePagerDuty
from tests.people_events import ROUTING_KEY

ROOT = Path(__file__).resolve().parent.parent


async def send_test(config: Path, *args: str, key: str = ROUTING_KEY) -> tuple[int, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "send-test",
        "--config",
        str(config),
        "--timeout",
        "3",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PD_ROUTING_KEY": key, "NTFY_TOKEN": "tk_bench"},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    lines = out.decode().splitlines()
    assert lines and "delivering the test event myself" in lines[0], err.decode()
    assert proc.returncode is not None
    return proc.returncode, dict(line.split(": ", 1) for line in lines[1:] if line.startswith("sink "))


@pytest.fixture
def config(tmp_path: Path, ntfy: FakeNtfy, pagerduty: FakePagerDuty) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[agent]
gateway_id = "gw-test"
state_dir = "{tmp_path / "state"}"

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
port = 5020
  [[machines.signals]]
  id = "fault"
  address = 10
  type = "bit"
  bit = 3

[[sinks]]
id = "phones"
kind = "ntfy"
url = "{ntfy.url}"
topic = "plant-a"
token_env = "NTFY_TOKEN"
min_severity = "critical"
timeout = "1s"
retry_max = "300ms"

[[sinks]]
id = "oncall"
kind = "pagerduty"
url = "{pagerduty.url}"
routing_key_env = "PD_ROUTING_KEY"
min_severity = "critical"
machines = ["m1"]
timeout = "1s"
retry_max = "300ms"
"""
    )
    return path


async def test_send_test_reaches_the_phones_and_the_on_call(
    config: Path, ntfy: FakeNtfy, pagerduty: FakePagerDuty
) -> None:
    ntfy.token = "tk_bench"
    status, verdicts = await send_test(config)
    assert (status, verdicts) == (0, {"sink phones": "accepted", "sink oncall": "accepted"})
    (note,) = ntfy.messages
    assert (note["title"], note["priority"], note["tags"]) == ("gw-test: test notification", 3, ["test_tube"])
    assert "the uplink from this gateway works" in note["message"]
    trigger, resolve = pagerduty.events
    assert (trigger["event_action"], trigger["payload"]["severity"], resolve["event_action"]) == (
        "trigger",
        "info",
        "resolve",
    )
    assert pagerduty.incidents["gw-test/_gateway/test"]["status"] == "resolved"  # nobody is left paged

    status, verdicts = await send_test(config, "--sink", "phones")
    assert (status, verdicts) == (0, {"sink phones": "accepted"})
    assert len(ntfy.messages) == 2 and len(pagerduty.events) == 2  # the on-call was not asked again


async def test_send_test_names_what_is_wrong(config: Path, ntfy: FakeNtfy, pagerduty: FakePagerDuty) -> None:
    ntfy.token = "tk_other"
    status, verdicts = await send_test(config, key="not-a-routing-key")
    assert status == 1
    assert verdicts["sink phones"].startswith("not accepted within 3s: HTTP 401")
    assert "token" in verdicts["sink phones"]
    assert "PagerDuty refuses the routing key" in verdicts["sink oncall"]
    assert "not-a-routing-key" not in verdicts["sink oncall"]
    assert pagerduty.events == [] and ntfy.messages == []
