"""The Modbus driver against a real pymodbus server in the same process."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.errors import ConnectionLost
from agent.model import Quality
from drivers.modbus.codec import encode
from drivers.modbus.config import ModbusMachine
from drivers.modbus.driver import ModbusDriver, plan_for
from drivers.modbus.sim import SimulatedMachine


def machine_cfg(port: int, signals: list[dict[str, Any]], **kw: Any) -> ModbusMachine:
    doc = {
        "id": "m1",
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "300ms",
        "signals": signals,
        **kw,
    }
    return ModbusMachine.model_validate(doc)


ALL_TYPES: list[tuple[dict[str, Any], tuple[str, int, list[int] | list[bool]], object]] = [
    # (signal, registers or bits to put on the server, expected value)
    ({"id": "u16", "address": 0, "type": "uint16"}, ("holding", 0, [65535]), 65535),
    ({"id": "i16", "address": 1, "type": "int16"}, ("holding", 1, [65535]), -1),
    ({"id": "i32", "address": 2, "type": "int32"}, ("holding", 2, [0xFFFE, 0x1DC0]), -123456),
    ({"id": "u32", "address": 4, "type": "uint32", "byte_order": "CDAB"}, ("holding", 4, [0x0001, 0x0002]), 0x00020001),
    ({"id": "f32", "address": 6, "type": "float32"}, ("holding", 6, [0x4048, 0xF5C3]), pytest.approx(3.14, rel=1e-6)),
    (
        {"id": "f32s", "address": 8, "type": "float32", "byte_order": "DCBA"},
        ("holding", 8, [0xC3F5, 0x4840]),
        pytest.approx(3.14, rel=1e-6),
    ),
    (
        {"id": "f32b", "address": 10, "type": "float32", "byte_order": "BADC"},
        ("holding", 10, [0x4840, 0xC3F5]),
        pytest.approx(3.14, rel=1e-6),
    ),
    ({"id": "i64", "address": 12, "type": "int64"}, ("holding", 12, encode(-(2**40), "int64")), -(2**40)),
    (
        {"id": "f64", "address": 16, "type": "float64", "byte_order": "CDAB"},
        ("holding", 16, encode(2.5e10, "float64", "CDAB")),
        2.5e10,
    ),
    ({"id": "str", "address": 20, "type": "string", "length": 3}, ("holding", 20, [0x4142, 0x4300, 0]), "ABC"),
    (
        {"id": "scaled", "address": 23, "type": "uint16", "scale": 0.1, "offset": -5},
        ("holding", 23, [1000]),
        pytest.approx(95.0),
    ),
    ({"id": "bit3", "address": 24, "type": "bit", "bit": 3}, ("holding", 24, [0b1000]), True),
    ({"id": "bit2", "address": 24, "type": "bit", "bit": 2}, ("holding", 24, [0b1000]), False),
    ({"id": "b", "address": 25, "type": "bool"}, ("holding", 25, [7]), True),
    ({"id": "ir", "register": "input", "address": 3, "type": "uint16"}, ("input", 3, [42]), 42),
    ({"id": "coil", "register": "coil", "address": 5, "type": "bool"}, ("coil", 5, [True]), True),
    ({"id": "di", "register": "discrete", "address": 17, "type": "bool"}, ("discrete", 17, [True]), True),
]


@pytest.fixture
async def all_types(machine: SimulatedMachine) -> AsyncIterator[tuple[SimulatedMachine, ModbusMachine]]:
    for _, (table, addr, values), _ in ALL_TYPES:
        await machine.set(table, addr, values)
    yield machine, machine_cfg(machine.port, [s for s, _, _ in ALL_TYPES])


async def test_every_type_decodes_from_a_real_server(all_types: tuple[SimulatedMachine, ModbusMachine]) -> None:
    _machine, cfg = all_types
    async with ModbusDriver(cfg) as driver:
        samples = {s.signal: s for s in await driver.read()}
    for signal, _, expected in ALL_TYPES:
        got = samples[signal["id"]]
        assert got.quality is Quality.GOOD, (signal, got)
        assert got.value == expected, signal["id"]
    assert set(samples) == {s["id"] for s, _, _ in ALL_TYPES}


async def test_one_poll_makes_exactly_the_planned_requests(all_types: tuple[SimulatedMachine, ModbusMachine]) -> None:
    machine, cfg = all_types
    plan = plan_for(cfg)
    assert len(plan) == 4  # holding 0..25 merged, input, coil, discrete: one read per table
    async with ModbusDriver(cfg) as driver:
        before = machine.requests
        await driver.read()
        assert machine.requests - before == len(plan)


async def test_nan_is_a_bad_sample_not_a_number(machine: SimulatedMachine) -> None:
    nan = struct.unpack(">HH", struct.pack(">f", math.nan))
    await machine.set("holding", 0, list(nan))
    await machine.set("holding", 2, encode(math.inf, "float32"))
    cfg = machine_cfg(
        machine.port, [{"id": "a", "address": 0, "type": "float32"}, {"id": "b", "address": 2, "type": "float32"}]
    )
    async with ModbusDriver(cfg) as driver:
        samples = await driver.read()
    assert [(s.signal, s.quality, s.value) for s in samples] == [("a", Quality.BAD, None), ("b", Quality.BAD, None)]
    assert all("finite" in (s.error or "") for s in samples)


async def test_exception_reply_gives_bad_samples_and_the_connection_stays(machine: SimulatedMachine) -> None:
    cfg = machine_cfg(machine.port, [{"id": "a", "address": 0}])
    async with ModbusDriver(cfg) as driver:
        machine.exception = 6  # device busy
        [s] = await driver.read()
        assert s.quality is Quality.BAD and "device busy" in (s.error or "")
        machine.exception = None
        await machine.set("holding", 0, [7])
        [s] = await driver.read()
        assert (s.quality, s.value) == (Quality.GOOD, 7)


async def test_refused_address_in_a_merged_read_is_isolated(machine: SimulatedMachine) -> None:
    signals = [{"id": f"s{i}", "address": i} for i in range(6)]
    for i in range(6):
        await machine.set("holding", i, [100 + i])
    machine.refused.add(("holding", 3))
    cfg = machine_cfg(machine.port, signals)
    async with ModbusDriver(cfg) as driver:
        assert len(driver.plan) == 1
        first = {s.signal: s for s in await driver.read()}
        assert first["s3"].quality is Quality.BAD
        assert first["s3"].error == "Modbus exception 2 (illegal data address)"
        assert all(first[f"s{i}"].value == 100 + i for i in (0, 1, 2, 4, 5))
        # From then on the plan avoids the refused address: two reads, no exception replies.
        assert [(r.address, r.count) for r in driver.plan] == [(0, 3), (4, 2)]
        before = machine.requests
        second = {s.signal: s for s in await driver.read()}
        assert machine.requests - before == 2
        assert second["s3"].quality is Quality.BAD
        assert [second[f"s{i}"].value for i in (0, 1, 2, 4, 5)] == [100, 101, 102, 104, 105]


async def test_connect_to_a_closed_port_is_connection_lost(unused_tcp_port: int) -> None:
    with pytest.raises(ConnectionLost, match="m1"):
        async with ModbusDriver(machine_cfg(unused_tcp_port, [{"id": "a", "address": 0}])):
            pass


async def test_server_that_never_answers_is_bounded_by_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # swallow requests, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = machine_cfg(port, [{"id": "a", "address": 0}], timeout="200ms")
        async with ModbusDriver(cfg) as driver:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(ConnectionLost):
                await driver.read()
            assert loop.time() - t0 < 1.0
    finally:
        server.close()


async def test_a_refused_address_is_tried_again_with_backoff_until_the_device_accepts_it(
    machine: SimulatedMachine, caplog: pytest.LogCaptureFixture
) -> None:
    """A PLC program change can add an address the device refused: it is probed again (alone, so the
    rest of the poll never pays for it) after `refused_retry`, then at doubling intervals."""
    signals = [{"id": f"s{i}", "address": i} for i in range(6)]
    for i in range(6):
        await machine.set("holding", i, [100 + i])
    machine.refused.add(("holding", 3))
    clock = [1000.0]
    cfg = machine_cfg(machine.port, signals, refused_retry="2m")
    caplog.set_level(logging.INFO, logger="andon.modbus")

    async def poll() -> tuple[dict[str, Any], int]:
        before = machine.requests
        got = await driver.read()
        samples = {s.signal: s for s in got}
        assert len(got) == len(samples) == 6  # each signal once per poll, probed or not
        return samples, machine.requests - before

    async with ModbusDriver(cfg, monotonic=lambda: clock[0]) as driver:
        first, _ = await poll()
        assert first["s3"].quality is Quality.BAD and len(driver.plan) == 2
        clock[0] += 119.0
        got, requests = await poll()
        assert requests == 2 and got["s3"].quality is Quality.BAD  # not yet: only the plan's reads
        clock[0] += 1.0
        got, requests = await poll()
        assert requests == 3 and got["s3"].quality is Quality.BAD  # probed alone, still refused
        assert got["s3"].error == "Modbus exception 2 (illegal data address)"
        clock[0] += 239.0
        assert (await poll())[1] == 2  # the next probe comes after twice the wait: 4 minutes
        machine.refused.clear()  # the PLC's new program has the register
        clock[0] += 1.0
        got, requests = await poll()
        assert requests == 3 and (got["s3"].quality, got["s3"].value) == (Quality.GOOD, 103)
        assert [(r.address, r.count) for r in driver.plan] == [(0, 6)]  # one merged read again
        got, requests = await poll()
        assert requests == 1 and [got[f"s{i}"].value for i in range(6)] == [100, 101, 102, 103, 104, 105]
    assert any("answers the address(es) of signal(s) s3 again" in r.getMessage() for r in caplog.records)


def test_refused_retry_defaults_to_five_minutes() -> None:
    assert machine_cfg(502, [{"id": "a", "address": 0}]).refused_retry == 300.0
