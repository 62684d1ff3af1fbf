"""Logs: UTC times with milliseconds, the journal's priority prefix, and repeated failures that are
reminded now and then, with durations on the monotonic clock."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.demo.receiver import Batch, Receiver, Reply
from agent.model import Severity, StoredEvent
from agent.ops import logs
from agent.ops.logs import Trouble, setup_logging, syslog_priority, utc_time
from agent.pipeline.delivery import Delivery
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.sinks.http import HttpSink, HttpSinkConfig, make_client
from tests.logkeeping import kept_logging

ROOT = Path(__file__).resolve().parent.parent
UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def journal_of(path: Path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_json_log_time_is_utc_with_milliseconds(capsys: pytest.CaptureFixture[str]) -> None:
    with kept_logging():
        setup_logging("info", json_format=True)
        logging.getLogger("andon.test").warning("machine %s is %s", "m1", "offline")
    record = json.loads(capsys.readouterr().out)
    assert UTC_MS.match(record["time"]), record["time"]
    logged = datetime.fromisoformat(record["time"])
    assert abs((datetime.now(UTC) - logged).total_seconds()) < 5  # UTC, not local time labelled Z


@pytest.mark.parametrize(
    ("wall", "text"),
    [(0.0, "1970-01-01T00:00:00.000Z"), (1_795_308_602.1185, "2026-11-22T00:50:02.118Z")],
)
def test_utc_time(wall: float, text: str) -> None:
    assert utc_time(wall) == text


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2), (35, 4)],
)
def test_syslog_priority(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


@pytest.mark.parametrize("json_format", [False, True])
def test_lines_carry_the_syslog_priority_when_stdout_is_the_journal(tmp_path: Path, json_format: bool) -> None:
    path = tmp_path / "journal"
    with kept_logging(), path.open("w") as stream:
        setup_logging("debug", json_format, stream=stream, env=journal_of(path))
        log = logging.getLogger("andon.test")
        log.error("sink up: cannot deliver")
        log.warning("slow")
        log.info("started")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("a bug")
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines[:3]] == ["<3>", "<4>", "<6>"]
    assert "sink up: cannot deliver" in lines[0]
    assert len(lines) >= 4 and all(line.startswith("<3>") for line in lines[3:])  # the traceback's lines too
    if not json_format:
        assert lines[0] == "<3>ERROR   andon.test: sink up: cannot deliver"  # journald stamps the time itself


def test_no_prefix_when_stdout_is_not_the_journal(tmp_path: Path) -> None:
    path, elsewhere = tmp_path / "pipe", tmp_path / "journal"
    elsewhere.touch()
    with kept_logging(), path.open("w") as stream:  # JOURNAL_STREAM inherited, but this stream is another file
        setup_logging("info", stream=stream, env=journal_of(elsewhere))
        logging.getLogger("andon.test").error("not for the journal")
    [line] = path.read_text().splitlines()
    assert not line.startswith("<") and line.endswith("ERROR   andon.test: not for the journal")
    assert UTC_MS.match(line.split(" ", 1)[0])


def test_the_agent_writes_priorities_into_the_journal_stream(tmp_path: Path) -> None:
    """The real command line: `run` that cannot create its state directory logs an error at <3>."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
state_dir = "{blocker}/state"
[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"
  [[machines.signals]]
  id = "a"
  address = 0
[status]
listen = ""
""")
    out = tmp_path / "stdout"
    with out.open("w") as stream:
        env = {**os.environ, **journal_of(out)}
        done = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=stream,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    lines = out.read_text().splitlines()
    assert any(line.startswith("<3>") and "cannot run" in line for line in lines), lines


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_795_308_600.0


def test_trouble_reminds_now_and_then_with_monotonic_durations(caplog: pytest.LogCaptureFixture) -> None:
    c = Clocks()
    trouble = Trouble(logging.getLogger("andon.test"), "sink up", monotonic=lambda: c.mono, wall=lambda: c.wall)
    caplog.set_level(logging.DEBUG, logger="andon.test")

    def step(seconds: float) -> None:
        c.mono += seconds
        c.wall += seconds

    trouble.fail("HTTP 503", "retrying")
    for _ in range(29):  # ten seconds apart: 290 s, under the first reminder's 300 s
        step(10)
        trouble.fail("HTTP 503")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["sink up: HTTP 503; retrying"]
    step(10)
    trouble.fail("HTTP 502")  # 300 s: the first reminder
    texts = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert texts[1] == "sink up: still failing since 2026-11-22T00:50:00.000Z (31 attempts): HTTP 502"
    c.wall -= 3600 * 24  # NTP sets the clock back a day: durations are not fooled
    step(599)
    trouble.fail("HTTP 502")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2  # next one after 600 s, not 300
    step(1)
    trouble.fail("HTTP 502")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3
    for _ in range(10):  # the interval doubles up to an hour
        step(logs.REMIND_MAX)
        trouble.fail("HTTP 502")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 13
    step(5)
    trouble.ok("delivering again")
    [info] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert info.getMessage() == "sink up: delivering again after 36905.0s (43 failed attempts)"
    assert not trouble.failing and trouble.last_error is None
    trouble.fail("HTTP 503")  # a new episode: logged at once, and counted afresh
    assert caplog.records[-1].getMessage() == "sink up: HTTP 503" and trouble.attempts == 1


async def test_the_delivery_loop_reminds_of_an_upstream_that_stays_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only once: the real delivery loop against a real receiver answering 503 for good."""
    monkeypatch.setattr(logs, "REMIND_FIRST", 0.2)
    caplog.set_level(logging.DEBUG, logger="andon.delivery")
    answered = asyncio.Event()
    reminded = asyncio.Event()

    def down(batch: Batch, headers: dict[str, str]) -> Reply:
        answered.set()
        if any("still failing since" in r.getMessage() for r in caplog.records):
            reminded.set()
        return Reply(503)

    async with Receiver(down) as upstream, AsyncOutbox(Outbox(tmp_path / "outbox.db")) as outbox:
        await outbox.call(outbox.sync.set_sinks, ["up"])
        body = json.dumps({"id": "ev-1", "data": {"seq": 1}}).encode()
        await outbox.call(outbox.sync.append, [StoredEvent(1, "ev-1", Severity.WARNING, body)], {})
        config = HttpSinkConfig.model_validate({"id": "up", "kind": "http", "url": upstream.url})
        async with make_client(config) as client:
            delivery = Delivery(HttpSink(config, client, None), outbox, batch_size=10, retry_max=0.05)
            task = asyncio.create_task(delivery.run())
            try:
                async with asyncio.timeout(10):
                    await reminded.wait()
            finally:
                delivery.stop()
                await task
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith("sink up: cannot deliver (HTTP 503)")
    assert re.fullmatch(r"sink up: still failing since \S+Z \(\d+ attempts\): cannot deliver \(HTTP 503\)", errors[1])
    assert answered.is_set() and delivery.stats().failing
