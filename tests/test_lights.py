"""Stack lights: the lamps as a pure function of the alerts (tables), the config's refusals, and a
real tower (a pymodbus server) whose coils follow the alerts and come back after it restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent.config import LightConfig, parse_config
from agent.errors import ConfigError
from agent.model import Severity
from agent.ops.lights import Lamps, Lights, StackLight, lamps_for, writes_for
from agent.pipeline.surface import modbus_lamps
from drivers.modbus.sim import SimulatedMachine
from tests.waiting import Changes

C, W, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO


@dataclass(frozen=True)
class A:
    key: str
    severity: Severity
    acknowledged: bool = False


L = Lamps  # short for the table below


@pytest.mark.parametrize(
    ("alerts", "machines", "lamps"),
    [
        ([], None, L(green=True)),
        ([A("p1/wear", W)], None, L(yellow=True)),
        ([A("p1/wear", INFO)], None, L()),  # info: something is active, so not green; the tower has no white lamp
        ([A("p1/wear", W), A("p1/fault", C)], None, L(red=True, buzzer=True)),
        ([A("p1/wear", W), A("p1/fault", C, acknowledged=True)], None, L(red=True)),  # acknowledged: quiet
        ([A("p1/fault", C, True), A("p2/fault", C)], None, L(red=True, buzzer=True)),  # one not acknowledged
        ([A("p1/offline", W)], None, L(yellow=True, blue=True)),  # offline's own severity counts too
        ([A("p1/offline", C)], None, L(red=True, blue=True, buzzer=True)),
        ([A("p1/offline", INFO)], None, L(blue=True)),
        ([A("p1/alarms/offline", W)], None, L(yellow=True)),  # an OPC UA condition named "offline" is not
        ([A("p2/fault", C)], {"p1"}, L(green=True)),  # another tower's machine
        ([A("p2/fault", C), A("p1/wear", W)], {"p1"}, L(yellow=True)),
        ([A("p1/alarms/Door.Open", C)], {"p1"}, L(red=True, buzzer=True)),  # three-part keys
        ([A("p10/wear", W)], {"p1"}, L(green=True)),  # machine ids compared whole, not as prefixes
    ],
)
def test_lamps_are_a_pure_function_of_the_active_alerts(
    alerts: list[A], machines: set[str] | None, lamps: Lamps
) -> None:
    assert lamps_for(alerts, machines) == lamps


def light(**over: Any) -> LightConfig:
    doc: dict[str, Any] = {
        "id": "tower-1",
        "protocol": "modbus",
        "host": "127.0.0.1",
        "write": True,
        "red": {"register": "coil", "address": 0},
        "yellow": {"register": "coil", "address": 1},
        "green": {"register": "coil", "address": 2},
        "blue": {"register": "coil", "address": 3},
        "buzzer": {"register": "coil", "address": 4},
        "timeout": "300ms",
    }
    doc.update(over)
    return LightConfig.model_validate(doc)


def test_writes_cover_each_configured_lamp_in_order() -> None:
    cfg = light(blue=None, buzzer={"register": "holding", "address": 7})
    assert writes_for(cfg, Lamps(red=True, buzzer=True)) == [
        ("coil", 0, True),
        ("coil", 1, False),
        ("coil", 2, False),
        ("holding", 7, True),
    ]
    assert Lamps(red=True, buzzer=True).describe() == "red+buzzer" and Lamps().describe() == "dark"


BASE = {"machines": [{"id": "p1", "protocol": "modbus", "host": "h", "signals": [{"id": "s", "address": 0}]}]}
LAMPS = {"red": {"address": 0}, "yellow": {"address": 1}, "green": {"address": 2}}


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({}, "lights[0].write: stack light 'tower-1' writes to a device: set write = true to allow it"),
        ({"write": False}, "lights[0].write: stack light 'tower-1' writes to a device"),
        ({"write": True, "green": {"address": 0}}, "lights[0].green: green and red are both coil 0"),
        ({"write": True, "machines": ["p1", "p9"]}, "lights[0].machines[1]: no machine with id 'p9'"),
        ({"write": True, "red": {"register": "input", "address": 0}}, "lights[0].red.register: Input should be"),
        ({"write": True, "green": None}, "lights[0].green"),
        ({"write": True, "colour": "red"}, "lights[0].colour: unknown key"),
    ],
)
def test_config_refuses_a_light_with_one_line_naming_the_key(entry: dict[str, Any], error: str) -> None:
    doc = {"id": "tower-1", "protocol": "modbus", "host": "10.0.0.9", **LAMPS, **entry}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, "lights": [doc]}, "site.toml")
    assert str(exc.value).startswith(f"site.toml: {error}") and "\n" not in str(exc.value)


def test_config_takes_a_light_with_write_true() -> None:
    doc = {"id": "tower-1", "protocol": "modbus", "host": "10.0.0.9", "write": True, "machines": ["p1"], **LAMPS}
    (cfg,) = parse_config({**BASE, "lights": [doc]}).lights
    assert (cfg.port, cfg.unit, cfg.blue, cfg.buzzer, cfg.red.table) == (502, 1, None, None, "coil")
    assert parse_config(BASE).lights == []


# -- a real tower: a pymodbus server --------------------------------------------------------------


async def lamps_on(tower: SimulatedMachine) -> Lamps:
    bits = await tower.get("coil", 0, 5)
    return Lamps(*(bool(b) for b in bits))


async def until_lamps(tower: SimulatedMachine, want: Lamps, within: float = 5.0) -> None:
    """Wait (on the tower's replies, not a clock) until its coils show ``want``."""
    async with asyncio.timeout(within):
        while await lamps_on(tower) != want:
            await tower.wait_replies(1)


@contextlib.asynccontextmanager
async def running(light: StackLight | Lights) -> AsyncIterator[None]:
    task = asyncio.create_task(light.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_coils_follow_the_alerts_and_come_back_after_the_tower_restarts() -> None:
    changes = Changes()
    async with SimulatedMachine(registers=4) as tower:
        lights = Lights.from_config([light(port=tower.port)], modbus_lamps, backoff_max=0.3, on_change=changes.bump)
        (tl,) = lights.lights
        lights.show([])
        async with running(lights):
            await until_lamps(tower, Lamps(green=True))
            lights.show([A("p1/wear", W)])
            await until_lamps(tower, Lamps(yellow=True))
            lights.show([A("p1/wear", W), A("p1/fault", C)])
            await until_lamps(tower, Lamps(red=True, buzzer=True))
            lights.show([A("p1/wear", W), A("p1/fault", C, acknowledged=True)])
            await until_lamps(tower, Lamps(red=True))
            await changes.until(lambda: tl.shown == Lamps(red=True))
            assert tl.failures == 0 and tl.last_error is None
            port = tower.port
            await tower.stop()  # the tower loses power ...
            lights.show([A("p1/offline", W)])  # ... while the state changes
            await changes.until(lambda: tl.failures >= 1)
            assert tl.shown is None and "stack light 'tower-1'" in (tl.last_error or "")
            async with SimulatedMachine(registers=4, port=port) as again:  # back, all coils off
                await until_lamps(again, Lamps(yellow=True, blue=True))
                await changes.until(lambda: tl.shown == Lamps(yellow=True, blue=True))
                assert tl.last_error is None


async def test_holding_register_lamps_are_written_1_and_0() -> None:
    async with SimulatedMachine(registers=20) as tower:
        cfg = light(
            port=tower.port,
            red={"register": "holding", "address": 10},
            yellow={"register": "holding", "address": 11},
            green={"register": "holding", "address": 12},
            blue=None,
            buzzer=None,
        )
        sl = StackLight(cfg, modbus_lamps)
        sl.show(Lamps(yellow=True))
        async with running(sl), asyncio.timeout(5):
            while await tower.get("holding", 10, 3) != [0, 1, 0]:
                await tower.wait_replies(1)
            sl.show(Lamps(green=True))
            while await tower.get("holding", 10, 3) != [0, 0, 1]:
                await tower.wait_replies(1)


async def test_lamps_are_written_again_every_refresh() -> None:
    async with SimulatedMachine(registers=4) as tower:
        sl = StackLight(light(port=tower.port), modbus_lamps, refresh=0.2)
        sl.show(Lamps(red=True))
        async with running(sl):
            await until_lamps(tower, Lamps(red=True))
            await tower.set("coil", 0, [False] * 5)  # someone switched the tower off and on
            started = time.monotonic()
            await until_lamps(tower, Lamps(red=True))  # nothing changed in the alerts: the refresh did it
            assert 0.1 < time.monotonic() - started < 1.5


async def test_a_tower_that_refuses_writes_is_retried_and_show_never_blocks() -> None:
    changes = Changes()
    async with SimulatedMachine(registers=4) as tower:
        tower.exception = 4  # device failure on every request
        sl = StackLight(light(port=tower.port), modbus_lamps, backoff_max=0.2, on_change=changes.bump)
        async with running(sl):
            for n in range(50):  # show() only records: it returns at once whatever the tower does
                started = time.perf_counter()
                sl.show(Lamps(red=n % 2 == 0))
                assert time.perf_counter() - started < 0.01
            await changes.until(lambda: sl.failures >= 3)  # retried
            assert sl.shown is None and "refused the write of coil 0" in (sl.last_error or "")
            tower.exception = None
            await until_lamps(tower, Lamps(red=False))
            await changes.until(lambda: sl.last_error is None)
            assert sl.shown == Lamps(red=False)
