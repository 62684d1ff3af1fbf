"""``andon-agent outbox``: show, retry and purge, as a subprocess on a real file the agent has open."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.demo.receiver import Batch, Receiver, Reply
from agent.model import Severity, StoredEvent
from agent.pipeline.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent


def event(seq: int, n: int) -> StoredEvent:
    body = {
        "specversion": "1.0",
        "id": f"ev-{n}",
        "source": "/andon/gw",
        "type": "andon.alert.raised",
        "subject": f"m1/r{n}",
        "time": "2026-11-22T00:00:00.000Z",
        "datacontenttype": "application/json",
        "data": {"seq": seq, "n": n},
    }
    return StoredEvent(seq, f"ev-{n}", Severity.WARNING, json.dumps(body).encode())


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[agent]
gateway_id = "gw"
state_dir = "{tmp_path / "state"}"

[[machines]]
id = "m1"
protocol = "modbus"
host = "127.0.0.1"

  [[machines.signals]]
  id = "wear"
  address = 0

[[sinks]]
id = "up"
kind = "http"
url = "{url}"
timeout = "2s"
""")
    return cfg


@pytest.fixture
def agent_outbox(tmp_path: Path) -> Iterator[tuple[Outbox, list[StoredEvent]]]:
    """The agent's outbox, open (as in a running agent): 10 queued events and 4 dead letters."""
    ob = Outbox(tmp_path / "state" / "outbox.db")
    ob.open()
    ob.set_sinks(["up"])
    base = ob.last_seq()
    events = [event(base + n, n) for n in range(1, 15)]
    ob.append(events, {})
    ob.settle("up", events[3].seq, [(e, "HTTP 400") for e in events[:4]])
    yield ob, events
    ob.close()


async def outbox_cmd(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "outbox",
        "--config",
        str(config),
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def letters(ob: Outbox) -> list[tuple[Any, ...]]:
    return ob.db.execute("SELECT seq, reason FROM dead_letters ORDER BY seq").fetchall()


async def test_show_lists_queue_and_dead_letters_while_the_agent_has_the_file_open(
    tmp_path: Path, agent_outbox: tuple[Outbox, list[StoredEvent]]
) -> None:
    ob, events = agent_outbox
    cfg = write_config(tmp_path, "http://127.0.0.1:1/alerts")
    ob.db.execute("BEGIN")  # the agent in the middle of reading
    ob.db.execute("SELECT count(*) FROM events").fetchone()
    code, out, err = await outbox_cmd(cfg, "--events", "2")
    ob.db.execute("COMMIT")
    assert code == 0, err
    assert "10 event(s) queued" in out
    assert "sink up: 10 pending, 4 dead letter(s)" in out
    assert f"up seq={events[0].seq} id=ev-1 andon.alert.raised m1/r1" in out and "HTTP 400" in out
    assert f"seq={events[4].seq} id=ev-5 warning" in out  # the oldest queued events
    code, out, _ = await outbox_cmd(cfg, "show", "--json")
    summary = json.loads(out)
    assert (summary["events"], summary["dead_letters"], summary["oldest_seq"]) == (10, 4, events[4].seq)
    assert summary["sinks"] == [
        {
            "sink": "up",
            "configured": True,
            "pending": 10,
            "cursor": events[3].seq,
            "dead_letters": 4,
            "oldest_dead_letter": summary["sinks"][0]["oldest_dead_letter"],
        }
    ]
    assert [d["id"] for d in summary["dead_letter_list"]] == ["ev-1", "ev-2", "ev-3", "ev-4"]


async def test_purge_needs_yes(tmp_path: Path, agent_outbox: tuple[Outbox, list[StoredEvent]]) -> None:
    ob, events = agent_outbox
    cfg = write_config(tmp_path, "http://127.0.0.1:1/alerts")
    code, _, err = await outbox_cmd(cfg, "purge")
    assert code == 1 and "would delete 4 dead letter(s)" in err and "--yes" in err
    assert len(letters(ob)) == 4
    code, out, err = await outbox_cmd(cfg, "purge", "--seq", str(events[1].seq), "--yes")
    assert code == 0 and "deleted 1 dead letter(s)" in out, err
    assert [r[0] for r in letters(ob)] == [events[0].seq, events[2].seq, events[3].seq]
    ob.append([event(events[-1].seq + 1, 99)], {})  # the agent keeps writing
    ob.settle("up", events[-1].seq + 1)
    assert ob.stats().dead_letters == 3 and ob.depth() == 0
    code, out, _ = await outbox_cmd(cfg, "purge", "--yes")
    assert code == 0 and "deleted 3" in out and letters(ob) == []


async def test_retry_sends_dead_letters_again_and_keeps_those_refused_again(
    tmp_path: Path, agent_outbox: tuple[Outbox, list[StoredEvent]]
) -> None:
    ob, events = agent_outbox

    def respond(batch: Batch, headers: dict[str, str]) -> Reply:
        return Reply(422) if any(e["id"] == "ev-3" for e in batch) else Reply(200)

    async with Receiver(respond) as r:
        cfg = write_config(tmp_path, r.url)
        code, out, err = await outbox_cmd(cfg, "retry")
    assert code == 1  # one is still refused
    assert "sink up: 3 dead letter(s) delivered, 1 refused again (kept)" in out, err
    assert [e["id"] for e in r.events] == ["ev-1", "ev-2", "ev-4"]  # the same ids and bodies
    assert r.events[0] == json.loads(events[0].body)
    assert letters(ob) == [(events[2].seq, "HTTP 422")]
    assert ob.depth() == 10  # the queue is not touched


async def test_retry_with_the_upstream_down_keeps_everything(
    tmp_path: Path, agent_outbox: tuple[Outbox, list[StoredEvent]], unused_tcp_port: int
) -> None:
    ob, _ = agent_outbox
    cfg = write_config(tmp_path, f"http://127.0.0.1:{unused_tcp_port}/alerts")
    code, _, err = await outbox_cmd(cfg, "retry")
    assert code == 1 and "does not accept events now" in err and "4 dead letter(s) left" in err
    assert len(letters(ob)) == 4


async def test_no_outbox_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1/alerts")
    code, _, err = await outbox_cmd(cfg)
    assert code == 1 and "no outbox at" in err
    assert not (tmp_path / "state" / "outbox.db").exists()
