"""The whole agent in-process: simulated machines -> rules -> outbox -> real HTTP receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.config import Config
from agent.demo.receiver import Receiver
from agent.errors import ConnectionLost
from agent.model import Quality, Sample
from agent.pipeline.supervisor import Agent
from drivers.modbus.sim import SimulatedMachine
from tests.conftest import WEAR_SIGNALS, machine_doc
from tests.waiting import Changes, of, running


async def test_alert_raised_escalated_cleared_and_delivered(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    async with running(make_config(machine.port, receiver.url)):
        await machine.set("holding", 0, [850])  # 85.0 %
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "raised")) == 1)
        await machine.set("holding", 0, [960])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "updated")) == 1)
        await machine.set("holding", 0, [100])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "cleared")) == 1)
        await machine.set("holding", 10, [0b1000])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/fault", "raised")) == 1)

    raised, updated, cleared = (of(receiver.events, "m1/wear", k)[0] for k in ("raised", "updated", "cleared"))
    assert raised["specversion"] == "1.0" and raised["source"] == "/andon/gw-test"
    assert raised["datacontenttype"] == "application/json" and raised["time"].endswith("Z")
    d = raised["data"]
    assert (d["alert"], d["machine"], d["rule"], d["signal"]) == ("m1/wear", "m1", "wear", "wear")
    assert (d["severity"], d["value"], d["threshold"]) == ("warning", 85.0, 80.0)
    assert (d["gateway"], d["site"]) == ("gw-test", "lab")
    assert "85%" in d["message"]
    assert updated["data"]["severity"] == "critical" and updated["data"]["threshold"] == 95.0
    assert cleared["data"]["value"] == 10.0
    seqs = [e["data"]["seq"] for e in receiver.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({e["id"] for e in receiver.events}) == len(receiver.events)
    headers, _ = receiver.requests[0]
    assert headers["content-type"] == "application/cloudevents-batch+json"


async def test_upstream_down_then_up_loses_nothing_and_keeps_order(
    machine: SimulatedMachine, make_config: Callable[..., Config], unused_tcp_port: int
) -> None:
    down = Receiver(port=unused_tcp_port)  # not started: connection refused
    changes = Changes()
    async with running(make_config(machine.port, down.url), changes) as agent:
        assert agent.outbox is not None
        for n, value in enumerate((850, 960, 100, 850, 100), start=1):
            await machine.set("holding", 0, [value])

            def queued(n: int = n) -> bool:
                return agent.outbox is not None and agent.outbox.sync.depth() == n

            await changes.until(queued)
        assert agent.outbox.sync.depth("up") == 5
        async with down:  # the upstream comes back on the same port
            await down.wait_for(lambda ev: len(ev) == 5)
    assert [e["type"].rsplit(".", 1)[1] for e in down.events] == ["raised", "updated", "cleared", "raised", "cleared"]
    seqs = [e["data"]["seq"] for e in down.events]
    assert seqs == sorted(seqs)


async def test_machine_offline_raised_then_cleared_after_restart_on_same_port(
    receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    machine = SimulatedMachine()
    await machine.start()
    cfg = make_config(machine.port, receiver.url)
    loop = asyncio.get_running_loop()
    changes = Changes()
    async with running(cfg, changes) as agent:
        await changes.until(lambda: agent.machines[0].status.last_good is not None)
        await machine.stop()
        stopped = loop.time()
        await changes.until(lambda: agent.alerts is not None and "m1/offline" in agent.alerts.active)
        took = loop.time() - stopped  # raised = committed; delivery is the outbox's business
        m = cfg.machines[0]
        assert took <= m.offline_after + m.poll_interval + 0.3  # allowance for scheduling on a busy machine
        await receiver.wait_for(lambda ev: len(of(ev, "m1/offline", "raised")) == 1)
        raised = of(receiver.events, "m1/offline", "raised")[0]
        assert raised["data"]["signal"] is None and raised["data"]["rule"] == "offline"
        await asyncio.sleep(1.0)  # stay down for several backoff steps (reconnect_max is 0.5 s)
        await machine.start()  # same port
        await receiver.wait_for(lambda ev: len(of(ev, "m1/offline", "cleared")) == 1)
        await machine.set("holding", 0, [900])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "raised")) == 1)
    await machine.stop()


async def test_one_dead_machine_does_not_slow_the_other(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    # A server that accepts connections and never answers: the worst kind of dead machine.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    dead = await asyncio.start_server(silent, "127.0.0.1", 0)
    dead_port = dead.sockets[0].getsockname()[1]
    cfg = make_config(
        machine.port,
        receiver.url,
        machines=[machine_doc("m1", machine.port, WEAR_SIGNALS), machine_doc("m2", dead_port, WEAR_SIGNALS)],
    )
    reads: dict[str, int] = {}
    try:
        async with running(cfg, reads=reads) as agent:
            alive = agent.machines[0].status
            start_reads, t0 = alive.reads, asyncio.get_running_loop().time()
            await receiver.wait_for(lambda ev: len(of(ev, "m2/offline", "raised")) == 1)
            elapsed = asyncio.get_running_loop().time() - t0
            rate = (alive.reads - start_reads) / elapsed
            # m1 keeps its 20 polls/s (at least half, on a busy machine); waiting behind the dead one's
            # 300 ms timeouts would leave it about 3.
            assert rate >= 0.5 / cfg.machines[0].poll_interval
            assert of(receiver.events, "m1/offline", "raised") == []
    finally:
        dead.close()


async def test_restart_does_not_raise_an_active_alert_again(
    machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(machine.port, receiver.url)
    await machine.set("holding", 0, [900])
    async with running(cfg):
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "raised")) == 1)
    changes, reads = Changes(), {"m1": 0}
    async with running(cfg, changes, reads):  # same state_dir
        await changes.until(lambda: reads["m1"] >= 5)
        assert len(of(receiver.events, "m1/wear", "raised")) == 1
        await machine.set("holding", 0, [0])
        await receiver.wait_for(lambda ev: len(of(ev, "m1/wear", "cleared")) == 1)


@pytest.mark.parametrize("removed", ["rule"])
async def test_alert_of_a_removed_rule_is_cleared(
    removed: str, machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    await machine.set("holding", 10, [0b1000])
    async with running(make_config(machine.port, receiver.url)):
        await receiver.wait_for(lambda ev: len(of(ev, "m1/fault", "raised")) == 1)
    without_fault = make_config(
        machine.port,
        receiver.url,
        rules=[{"id": "wear", "machine": "m1", "signal": "wear", "kind": "threshold", "warning": 80}],
    )
    async with running(without_fault):
        await receiver.wait_for(lambda ev: len(of(ev, "m1/fault", "cleared")) == 1)
    assert "no longer in the configuration" in of(receiver.events, "m1/fault", "cleared")[0]["data"]["message"]


class AnswersOnceThenDrops:
    """A driver for a device that accepts, gives one good read and then loses the connection."""

    def __init__(self, machine: Any, opened: list[float], fourth: asyncio.Event) -> None:
        self.machine, self._opened, self._fourth = machine, opened, fourth
        self.reads = 0

    async def __aenter__(self) -> AnswersOnceThenDrops:
        self._opened.append(time.monotonic())
        if len(self._opened) == 4:
            self._fourth.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def read(self) -> list[Sample]:
        self.reads += 1
        if self.reads > 1:
            raise ConnectionLost(self.machine.id, "connection reset by peer")
        return [Sample(self.machine.id, "wear", 1, Quality.GOOD, time.time())]


async def test_device_that_answers_once_then_drops_gets_backoff_not_a_tight_loop(
    receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(1, receiver.url, rules=[])  # poll 50 ms, reconnect_max 0.5 s
    opened: list[float] = []
    fourth = asyncio.Event()
    agent = Agent(cfg, driver_factory=lambda m: AnswersOnceThenDrops(m, opened, fourth))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(fourth.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    # Backoff before the 2nd, 3rd and 4th connection: at least 0.25 + 0.5 + 0.5 s. Without it the
    # agent would reconnect after every single poll (50 ms).
    assert opened[3] - opened[0] >= 1.2, [round(t - opened[0], 3) for t in opened]
