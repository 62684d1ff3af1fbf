"""What the maker learns, through the whole agent: a simulated PLC (a real pymodbus server), the
SQLite outbox, a real HTTP receiver (and a fake ntfy that must not get usage events), the
``report`` command reading the same file while the agent runs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import Config
from agent.demo.receiver import Receiver
from agent.pipeline.outbox import Outbox
from drivers.modbus.sim import SimulatedMachine
from tests.conftest import machine_doc
from tests.fake_services import FakeNtfy
from tests.waiting import Changes, of, running

SIGNALS = [
    {"id": "fault_code", "register": "holding", "address": 20, "type": "uint16"},
    {"id": "strokes", "register": "holding", "address": 21, "type": "uint16", "unit": "strokes"},
    {"id": "wear", "register": "holding", "address": 22, "type": "uint16", "scale": 0.1, "unit": "%"},
]
RULES = [
    {"id": "code", "machine": "m1", "signal": "fault_code", "kind": "code", "codes": {"12": {"message": "Overload"}}},
    {
        "id": "punch",
        "machine": "m1",
        "signal": "strokes",
        "kind": "tool_life",
        "name": "punch 3",
        "limit": 1000,
        "warning_remaining": 100,
    },
    {
        "id": "wear",
        "machine": "m1",
        "signal": "wear",
        "kind": "forecast",
        "limit": 95,
        "horizon": "30m",
        "change_drop": 20,
    },
]


def usage_config(make_config: Callable[..., Config], port: int, url: str, **usage: Any) -> Config:
    return make_config(port, url, machines=[machine_doc("m1", port, SIGNALS)], rules=RULES, usage=usage)


def usage_events(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def write_config(state_dir: Path, port: int, path: Path) -> Path:
    """A config file on ``state_dir`` with machine m1, for the command line."""
    path.write_text(
        f'[agent]\ngateway_id = "gw-test"\nstate_dir = "{state_dir}"\n\n'
        f'[[machines]]\nid = "m1"\nprotocol = "modbus"\nhost = "127.0.0.1"\nport = {port}\n'
        '[[machines.signals]]\nid = "fault_code"\nregister = "holding"\naddress = 20\n'
    )
    return path


async def test_tool_changes_are_sent_with_life_time_in_service_and_warning(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = usage_config(make_config, machine.port, receiver.url)
    await machine.set("holding", 21, [100])
    await machine.set("holding", 22, [500])  # wear 50 %
    changes, reads = Changes(), {"m1": 0}
    async with running(cfg, changes, reads):
        await machine.set("holding", 21, [920])  # 80 strokes left: the warning
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "raised")) == 1)
        await machine.set("holding", 21, [950])
        seen = reads["m1"]
        await changes.until(lambda: reads["m1"] >= seen + 2)  # a whole poll read 950
        await machine.set("holding", 21, [4])  # the tool is changed at 95 % of its life
        await receiver.wait_for(lambda ev: len(usage_events(ev, "andon.tool.changed")) == 1)
        await machine.set("holding", 22, [100])  # wear drops from 50 % to 10 %: a new tool
        await receiver.wait_for(lambda ev: len(usage_events(ev, "andon.tool.changed")) == 2)
    punch, wear = usage_events(receiver.events, "andon.tool.changed")
    raised = of(receiver.events, "m1/punch", "raised")[0]
    assert punch["subject"] == "m1/punch"
    data = punch["data"]
    assert (data["machine"], data["rule"], data["tool"], data["signal"]) == ("m1", "punch", "punch 3", "strokes")
    assert (data["life_used"], data["limit"], data["life_fraction"]) == (950, 1000, 0.95)
    assert 0 < data["warned_seconds"] < 10 and data["warned_seconds"] <= data["in_service_seconds"] < 10
    assert punch["time"] >= raised["time"]
    assert data["seq"] > raised["data"]["seq"] and data["severity"] == "info"
    assert (wear["subject"], wear["data"]["life_used"], wear["data"]["limit"]) == ("m1/wear", 50, 95)
    assert wear["data"]["warned_seconds"] is None  # the forecast never warned
    assert round(wear["data"]["life_fraction"], 4) == round(50 / 95, 4)


async def a_whole_poll(changes: Changes, reads: dict[str, int]) -> None:
    """Wait until a poll that began after this call has read m1."""
    seen = reads["m1"]
    await changes.until(lambda: reads["m1"] >= seen + 2)


async def test_polls_that_change_no_alert_commit_nothing(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    """The usage fold adds no write to the poll path: a tool counter rising poll after poll (the tool
    in use), a wear value moving and no limit crossed commit nothing, usage on (no fsync per poll)."""
    cfg = usage_config(make_config, machine.port, receiver.url)
    await machine.set("holding", 20, [0])
    await machine.set("holding", 21, [100])
    await machine.set("holding", 22, [500])
    changes, reads = Changes(), {"m1": 0}
    async with running(cfg, changes, reads):  # what starting commits is done before the first poll
        db = sqlite3.connect(cfg.agent.state_dir / "outbox.db")
        try:
            before = db.execute("PRAGMA data_version").fetchone()[0]  # changes when another connection commits
            for step in range(1, 11):
                await machine.set("holding", 21, [100 + step])
                await machine.set("holding", 22, [500 + step % 2])
                await a_whole_poll(changes, reads)
            after = db.execute("PRAGMA data_version").fetchone()[0]
        finally:
            db.close()
    assert after == before
    assert receiver.events == []


async def test_only_sinks_that_take_every_type_get_usage_events(
    machine: SimulatedMachine, receiver: Receiver, ntfy: FakeNtfy, make_config: Callable[..., Config]
) -> None:
    fast = {"retry_max": "300ms"}
    sinks = [
        {"id": "up", "kind": "http", "url": receiver.url, "timeout": "2s"} | fast,
        {"id": "phones", "kind": "ntfy", "url": ntfy.url, "topic": "plant-a"} | fast,
    ]
    cfg = make_config(machine.port, machines=[machine_doc("m1", machine.port, SIGNALS)], rules=RULES, sinks=sinks)
    await machine.set("holding", 21, [990])
    async with running(cfg):
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "raised")) == 1)
        await machine.set("holding", 21, [0])
        await receiver.wait_for(lambda ev: len(usage_events(ev, "andon.tool.changed")) == 1)
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "cleared")) == 1)
        await ntfy.wait_for(lambda: len(ntfy.messages) == 2)
    assert [m["title"].split(":")[0] for m in ntfy.messages] == ["m1", "m1"]  # the raise and the clear only


async def test_a_summary_per_period_never_twice_across_a_restart_and_report_reads_it(
    machine: SimulatedMachine,
    receiver: Receiver,
    make_config: Callable[..., Config],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = usage_config(make_config, machine.port, receiver.url, summary_every="1s", keep="1h")

    def summaries(ev: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return usage_events(ev, "andon.usage.summary")

    async with running(cfg):
        await machine.set("holding", 20, [12])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "raised")) == 1)
        await receiver.wait_for(lambda ev: len(summaries(ev)) >= 2)
        await machine.set("holding", 20, [0])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "cleared")) == 1)
    first_run = len(summaries(receiver.events))
    async with running(cfg):  # the same state directory: the periods already summarised stay done
        await receiver.wait_for(lambda ev: len(summaries(ev)) >= first_run + 2)
        path = write_config(cfg.agent.state_dir, machine.port, tmp_path / "andon.toml")
        capsys.readouterr()
        assert main(["report", "--config", str(path), "--json"]) == 0  # while the agent runs
        report = json.loads(capsys.readouterr().out)
    starts = [e["data"]["period_start"] for e in summaries(receiver.events)]
    assert len(starts) == len(set(starts))  # never twice
    assert all(e["subject"] == "m1" and e["data"]["machine"] == "m1" for e in summaries(receiver.events))
    total = {e["data"]["period_start"]: e["data"] for e in summaries(receiver.events)}
    assert sum(d["codes"].get("code/12", {}).get("count", 0) for d in total.values()) == 1
    m1 = report["m1"]
    assert m1["codes"]["code/12"]["count"] == 1 and m1["codes"]["code/12"]["text"] == "Overload"
    assert m1["alerts"]["code"]["raised"] == 1
    span = _epoch(m1["period_end"]) - _epoch(m1["period_start"])
    assert abs(m1["online_seconds"] + m1["offline_seconds"] + m1["unobserved_seconds"] - span) < 0.01
    db = sqlite3.connect(cfg.agent.state_dir / "outbox.db")
    stored = {
        json.loads(r[0])["period_start"]: json.loads(r[0]) for r in db.execute("SELECT summary FROM usage_periods")
    }
    db.close()
    sent = {k: {f: v for f, v in d.items() if f not in ("seq", "gateway", "site")} for k, d in total.items()}
    assert {k: stored[k] for k in sent} == sent  # the history holds exactly what was sent


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("setting", [{"enabled": False}, {"send": False}])
async def test_switched_off_sends_nothing(
    setting: dict[str, bool], machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = usage_config(make_config, machine.port, receiver.url, summary_every="1s", keep="1h", **setting)
    await machine.set("holding", 21, [990])
    async with running(cfg):
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "raised")) == 1)
        await machine.set("holding", 21, [0])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/punch", "cleared")) == 1)
        # Time must pass (no event can say so: nothing is sent): a period's end, so that the next
        # transition's commit would close the period (the clock closes it at its end anyway).
        await asyncio.sleep(1.1)
        await machine.set("holding", 20, [12])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/code", "raised")) == 1)  # later than any summary
    assert {e["type"] for e in receiver.events} == {"andon.alert.raised", "andon.alert.cleared"}
    db = sqlite3.connect(cfg.agent.state_dir / "outbox.db")
    rows = [
        db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("usage_state", "usage_periods", "usage_tool_changes")
    ]
    db.close()
    if setting.get("enabled") is False:
        assert rows == [0, 0, 0]  # nothing collected
    else:
        assert rows[0] == 1 and rows[1] >= 1 and rows[2] == 1  # collected for `report`, not sent


async def test_the_upkeep_prunes_old_history_also_with_usage_off(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    """History collected before usage was switched off is deleted once it is older than keep."""
    cfg = usage_config(make_config, machine.port, receiver.url, enabled=False, keep="1d")
    outbox = Outbox(cfg.agent.state_dir / "outbox.db")
    outbox.open()
    now = time.time()
    outbox.db.executemany(
        "INSERT INTO usage_tool_changes (machine, rule, time, data) VALUES ('m1', 'punch', ?, '{}')",
        [(now - 2 * 86400,), (now - 3600,)],
    )
    outbox.close()
    async with running(cfg):
        pass
    db = sqlite3.connect(cfg.agent.state_dir / "outbox.db")
    kept = [r[0] for r in db.execute("SELECT time FROM usage_tool_changes")]
    db.close()
    assert kept == [now - 3600]
