"""Modbus RTU, shared buses and recovery, against real pymodbus servers in this process.

RTU runs through pyserial's ``socket://`` URL: the client is pymodbus's real serial client, the
server a ``ModbusSerialServer`` speaking RTU frames over TCP (as a serial line behind a transparent
gateway). A "dead" unit is one the server never answers, as a dead slave on RS-485.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.cli.check import summary
from agent.config import Config, parse_config
from agent.errors import ConfigError, ConnectionLost
from agent.model import Quality
from agent.pipeline.supervisor import Agent
from drivers.modbus.bus import RESET_AFTER, Bus, NoAnswer, rtu_silence
from drivers.modbus.codec import encode
from drivers.modbus.config import ModbusMachine
from drivers.modbus.driver import GATEWAY_POLLS, ModbusDriver
from drivers.modbus.sim import SimulatedMachine
from drivers.registry import Drivers
from tests.waiting import Changes, counting_factory, running_agent


def rtu_machine(url: str, unit: int, signals: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"u{unit}",
        "protocol": "modbus",
        "serial": url,
        "baudrate": 115200,
        "unit": unit,
        "timeout": "200ms",
        "poll_interval": "100ms",
        "offline_after": "1s",
        "reconnect_max": "1s",
        "signals": signals or [{"id": "a", "address": 0}, {"id": "b", "address": 1}],
    }
    doc.update(kw)
    return doc


def modbus(doc: dict[str, Any]) -> ModbusMachine:
    return ModbusMachine.model_validate(doc)


@pytest.fixture
async def bus3() -> AsyncIterator[SimulatedMachine]:
    """Three RTU units (1, 2, 3) on one line; unit n holds [n, 10 * n] at holding 0..1."""
    async with SimulatedMachine(units=(1, 2, 3), rtu=True, registers=50) as sim:
        for unit in (1, 2, 3):
            await sim.set("holding", 0, [unit, 10 * unit], unit=unit)
        yield sim


# --------------------------------------------------------------------------------------------
# RTU and RTU over TCP


async def test_rtu_through_a_serial_url_reads_every_kind_of_value(bus3: SimulatedMachine) -> None:
    await bus3.set("holding", 2, encode(-123456, "int32", "CDAB"), unit=2)
    await bus3.set("holding", 4, encode(2.5, "float32", "BADC"), unit=2)
    await bus3.set("holding", 6, encode("PRG-7", "string", "ABCD", length=4), unit=2)
    await bus3.set("coil", 3, [True], unit=2)
    signals = [
        {"id": "a", "address": 0},
        {"id": "i32", "address": 2, "type": "int32", "byte_order": "CDAB"},
        {"id": "f32", "address": 4, "type": "float32", "byte_order": "BADC", "scale": 2},
        {"id": "name", "address": 6, "type": "string", "length": 4},
        {"id": "coil", "register": "coil", "address": 3, "type": "bool"},
    ]
    async with ModbusDriver(modbus(rtu_machine(bus3.url, 2, signals))) as driver:
        got = {s.signal: s.value for s in await driver.read()}
    assert got == {"a": 2, "i32": -123456, "f32": 5.0, "name": "PRG-7", "coil": True}


async def test_rtu_over_tcp_with_the_rtu_framer(bus3: SimulatedMachine) -> None:
    doc = rtu_machine(bus3.url, 3)
    del doc["serial"], doc["baudrate"]
    doc.update(host="127.0.0.1", port=bus3.port, framer="rtu")
    async with ModbusDriver(modbus(doc)) as driver:
        assert [(s.signal, s.value) for s in await driver.read()] == [("a", 3), ("b", 30)]


# --------------------------------------------------------------------------------------------
# One shared connection per bus


async def test_drivers_share_one_connection_per_bus_and_close_it(bus3: SimulatedMachine) -> None:
    drivers = Drivers()
    machines = [modbus(rtu_machine(bus3.url, u)) for u in (1, 2, 3)]
    tcp = modbus({**rtu_machine("", 1), "serial": None, "host": "127.0.0.1", "port": bus3.port, "framer": "rtu"})
    made = [drivers(m) for m in machines]
    assert all(isinstance(d, ModbusDriver) for d in made)
    buses = {id(d.bus) for d in made if isinstance(d, ModbusDriver)}
    assert len(buses) == 1
    other = drivers(tcp)
    assert isinstance(other, ModbusDriver) and id(other.bus) not in buses  # another connection
    async with contextlib.AsyncExitStack() as stack:
        for d in made:
            await stack.enter_async_context(d)
        results = await asyncio.gather(*(d.read() for d in made))  # one request at a time on the bus
        assert [[s.value for s in r] for r in results] == [[1, 10], [2, 20], [3, 30]]
        first = made[0]
        assert isinstance(first, ModbusDriver) and first.bus.connects == 1 and first.bus.connected
    await drivers.aclose()
    assert isinstance(first, ModbusDriver) and not first.bus.connected


async def test_a_silent_unit_does_not_close_the_bus_and_a_silent_bus_reconnects(bus3: SimulatedMachine) -> None:
    alive, dead = modbus(rtu_machine(bus3.url, 1)), modbus(rtu_machine(bus3.url, 3, timeout="100ms"))
    bus3.dead.add(3)
    bus = Bus(alive)
    async with ModbusDriver(alive, bus) as a, ModbusDriver(dead, bus) as d:
        loop = asyncio.get_running_loop()
        for _ in range(5):  # far more timeouts than pymodbus allows before it closes a connection
            t0 = loop.time()
            with pytest.raises(NoAnswer, match="unit 3"):
                await d.read()
            assert loop.time() - t0 < 0.5  # bounded by the dead unit's timeout
            assert [s.value for s in await a.read()] == [1, 10]
        assert bus.connects == 1  # the others never lost the connection
        for _ in range(RESET_AFTER):  # nobody answers: the bus reopens its connection ...
            with pytest.raises(NoAnswer):
                await d.read()
        assert [s.value for s in await a.read()] == [1, 10]  # ... transparently for the others
        assert bus.connects == 2
        bus3.dead.clear()
        assert [s.value for s in await d.read()] == [3, 30]  # the unit is back


async def test_request_gap_and_rtu_silence_keep_the_bus_quiet(bus3: SimulatedMachine) -> None:
    assert rtu_silence(9600) == pytest.approx(3.5 * 11 / 9600)
    assert rtu_silence(115200) == pytest.approx(0.00175)
    m = modbus(rtu_machine(bus3.url, 1, request_gap="50ms"))
    async with ModbusDriver(m) as driver:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(4):
            await driver.read()
        assert loop.time() - t0 >= 3 * 0.05  # one plan read per poll: three gaps between four reads


# --------------------------------------------------------------------------------------------
# The whole agent: one dead unit, the others keep their rate; a bus down and back


@contextlib.asynccontextmanager
async def agent_on(cfg: Config, counts: dict[str, int], changes: Changes) -> AsyncIterator[Agent]:
    drivers = Drivers()
    try:
        async with running_agent(cfg, changes=changes, driver_factory=counting_factory(counts, changes, drivers)) as a:
            yield a
    finally:
        await drivers.aclose()


async def test_three_units_on_one_bus_one_dead_the_others_keep_their_rate(
    bus3: SimulatedMachine, make_config: Callable[..., Config]
) -> None:
    bus3.dead.add(3)
    poll = 0.2
    docs = [rtu_machine(bus3.url, u, poll_interval=f"{poll}s", timeout="100ms") for u in (1, 2, 3)]
    cfg = make_config(0, machines=docs, rules=[])
    counts: dict[str, int] = {}
    changes = Changes()
    loop = asyncio.get_running_loop()
    async with agent_on(cfg, counts, changes) as agent:
        await changes.until(lambda: counts.get("u1", 0) >= 1 and counts.get("u2", 0) >= 1)
        t0, start = loop.time(), dict(counts)
        dead_t0 = bus3.requests_by_unit.get(3, 0)
        # Several backoff steps of the dead unit (0.25 s, 0.5 s, then the 1 s cap, jittered).
        await changes.until(lambda: bus3.requests_by_unit.get(3, 0) >= dead_t0 + 4, within=15)
        await changes.until(lambda: agent.machines[2].status.offline, within=5)
        elapsed = loop.time() - t0
        for mid in ("u1", "u2"):
            rate = (counts[mid] - start[mid]) / elapsed
            assert rate >= 0.6 / poll, (mid, rate)  # nominal 5/s; the dead unit's timeouts cost a little
            assert not agent.machines[int(mid[1]) - 1].status.offline
        dead_rate = (bus3.requests_by_unit[3] - dead_t0) / elapsed
        assert dead_rate <= 0.5 * (1 / poll), dead_rate  # backed off: far below its poll rate
        assert counts.get("u3", 0) == 0
        # Back to life: the dead unit is read again within its capped backoff (1 s + jitter).
        bus3.dead.clear()
        await changes.until(lambda: counts.get("u3", 0) >= 1, within=5)
        await changes.until(lambda: not agent.machines[2].status.offline, within=5)


async def test_bus_down_for_several_backoff_steps_comes_back_on_the_same_port(
    make_config: Callable[..., Config],
) -> None:
    sim = SimulatedMachine(units=(1, 2), rtu=True, registers=10)
    await sim.start()
    await sim.set("holding", 0, [7, 8], unit=2)
    docs = [rtu_machine(sim.url, u, reconnect_max="400ms") for u in (1, 2)]
    cfg = make_config(0, machines=docs, rules=[])
    counts: dict[str, int] = {}
    changes = Changes()
    try:
        async with agent_on(cfg, counts, changes) as agent:
            await changes.until(lambda: counts.get("u1", 0) >= 1 and counts.get("u2", 0) >= 1)
            await sim.stop()
            await changes.until(lambda: all(r.status.offline for r in agent.machines), within=5)
            entered = counts.get("u1.enter", 0)
            await changes.until(lambda: counts.get("u1.enter", 0) >= entered + 4, within=10)  # several tries
            sim = SimulatedMachine(units=(1, 2), rtu=True, registers=10, port=sim.port)
            await sim.start()  # same port
            await sim.set("holding", 0, [9, 9], unit=2)
            before = dict(counts)
            await changes.until(lambda: all(counts[m] > before[m] for m in ("u1", "u2")), within=5)
            await changes.until(lambda: not any(r.status.offline for r in agent.machines), within=5)
    finally:
        await sim.stop()


# --------------------------------------------------------------------------------------------
# Exception replies: bad samples and a bounded retry, never a crash


def tcp_machine(port: int, **kw: Any) -> ModbusMachine:
    doc: dict[str, Any] = {
        "id": "m1",
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "300ms",
        "poll_interval": "100ms",
        "signals": [{"id": "a", "address": 0}, {"id": "c", "register": "coil", "address": 0, "type": "bool"}],
    }
    doc.update(kw)
    return modbus(doc)


async def test_busy_is_retried_once_in_the_same_poll(machine: SimulatedMachine) -> None:
    await machine.set("holding", 0, [5])
    async with ModbusDriver(tcp_machine(machine.port)) as driver:
        machine.script = [6]  # busy once, then fine
        before = machine.requests
        got = {s.signal: s for s in await driver.read()}
        assert got["a"].value == 5 and got["a"].quality is Quality.GOOD
        assert machine.requests - before == 3  # holding (busy), holding again, coils
        machine.script = [6, 6]  # still busy after the retry: bad this poll, no third try
        before = machine.requests
        got = {s.signal: s for s in await driver.read()}
        assert got["a"].quality is Quality.BAD and "device busy" in (got["a"].error or "")
        assert got["c"].quality is Quality.GOOD
        assert machine.requests - before == 3
        assert (await driver.read())[0].value == 5  # the next poll reads it again


@pytest.mark.parametrize("code", [4, 1, 3])
async def test_other_exceptions_are_bad_for_one_poll(machine: SimulatedMachine, code: int) -> None:
    await machine.set("holding", 0, [5])
    async with ModbusDriver(tcp_machine(machine.port)) as driver:
        machine.script = [code]
        before = machine.requests
        got = {s.signal: s for s in await driver.read()}
        assert machine.requests - before == 2  # no retry within the poll
        assert got["a"].quality is Quality.BAD and f"exception {code}" in (got["a"].error or "")
        assert got["c"].quality is Quality.GOOD
        assert (await driver.read())[0].value == 5


@pytest.mark.parametrize("code", [10, 11])
async def test_gateway_says_unreachable_skips_the_poll_then_backs_off(machine: SimulatedMachine, code: int) -> None:
    async with ModbusDriver(tcp_machine(machine.port)) as driver:
        machine.exception = code
        for _ in range(GATEWAY_POLLS - 1):
            before = machine.requests
            samples = await driver.read()
            assert machine.requests - before == 1  # the rest of the poll is skipped
            assert all(s.quality is Quality.BAD and "gateway" in (s.error or "") for s in samples)
            assert len(samples) == 2
        with pytest.raises(ConnectionLost, match="unreachable"):
            await driver.read()  # the runtime backs the unit off
        machine.exception = None
        assert all(s.good for s in await driver.read())
        assert driver.bus.connects == 1


async def test_a_server_that_never_answers_is_bounded_and_reconnected(unused_tcp_port: int) -> None:
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(-1)  # swallow requests, never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    m = tcp_machine(port, timeout="100ms", framer="rtu")
    bus = Bus(m)
    loop = asyncio.get_running_loop()
    try:
        async with ModbusDriver(m, bus) as driver, ModbusDriver(m, bus):  # a second user keeps the bus
            for _ in range(RESET_AFTER + 1):
                t0 = loop.time()
                with pytest.raises(NoAnswer):
                    await driver.read()
                assert loop.time() - t0 < 0.6
        assert bus.connects == 2 and accepted == 2  # the silent connection was replaced
    finally:
        server.close()


# --------------------------------------------------------------------------------------------
# Refused addresses: the reviewer's overlapping-spans case, a refused gap, a length limit


async def test_refused_address_in_one_half_does_not_drop_an_overlapping_long_signal(
    machine: SimulatedMachine,
) -> None:
    # "long" (0..19) and "v" (15..24) overlap, so no cut of the merged read 0..24 is clean and its
    # halves overlap: [long, y] 0..19 and [w, v] 10..24, whose gap 11..14 lies inside "long". The
    # device refuses only address 22, so only "v" is bad; "long" must stay in the plan.
    signals = [
        {"id": "long", "address": 0, "type": "string", "length": 20},
        {"id": "y", "address": 2},
        {"id": "w", "address": 10},
        {"id": "v", "address": 15, "type": "string", "length": 10},
    ]
    await machine.set("holding", 0, encode("HELLO", "string", length=20))
    machine.refused.add(("holding", 22))
    async with ModbusDriver(tcp_machine(machine.port, signals=signals, max_gap=8)) as driver:
        first = {s.signal: s for s in await driver.read()}
        assert first["v"].quality is Quality.BAD
        assert [first[k].quality for k in ("long", "y", "w")] == [Quality.GOOD] * 3
        for _ in range(2):
            again = {s.signal: s for s in await driver.read()}
            assert again["long"].quality is Quality.GOOD and again["long"].value == "HELLO"
            assert again["v"].quality is Quality.BAD and again["w"].quality is Quality.GOOD
        assert [(r.address, r.count) for r in driver.plan] == [(0, 20)]


async def test_a_refused_gap_is_not_bridged_again(machine: SimulatedMachine) -> None:
    signals = [{"id": "a", "address": 0}, {"id": "b", "address": 5}]
    await machine.set("holding", 0, [1, 0, 0, 0, 0, 6])
    machine.refused.add(("holding", 3))  # unused: only the merged read covers it
    async with ModbusDriver(tcp_machine(machine.port, signals=signals)) as driver:
        assert len(driver.plan) == 1
        got = {s.signal: s.value for s in await driver.read()}
        assert got == {"a": 1, "b": 6}
        assert [(r.address, r.count) for r in driver.plan] == [(0, 1), (5, 1)]
        before = machine.requests
        assert {s.signal: s.value for s in await driver.read()} == {"a": 1, "b": 6}
        assert machine.requests - before == 2


async def test_a_device_that_refuses_long_reads_gets_shorter_ones(machine: SimulatedMachine) -> None:
    signals = [{"id": f"s{i}", "address": i} for i in range(8)]
    await machine.set("holding", 0, list(range(100, 108)))
    async with ModbusDriver(tcp_machine(machine.port, signals=signals)) as driver:
        machine.max_count = 4
        got = {s.signal: s.value for s in await driver.read()}
        assert got == {f"s{i}": 100 + i for i in range(8)}
        assert [r.count for r in driver.plan] == [4, 4]


# --------------------------------------------------------------------------------------------
# Config and `check`


def _cfg(machines: list[dict[str, Any]]) -> Config:
    return parse_config({"machines": machines})


def test_machines_on_one_port_must_agree_on_serial_settings() -> None:
    a, b = rtu_machine("/dev/ttyUSB0", 1), rtu_machine("/dev/ttyUSB0", 2, parity="E")
    with pytest.raises(ConfigError, match=r"machines\[1\]\.parity: machine 'u2' shares serial port /dev/ttyUSB0"):
        _cfg([a, b])
    _cfg([a, rtu_machine("/dev/ttyUSB1", 2, parity="E")])  # another port: fine


@pytest.mark.parametrize(("key", "value"), [("framer", "rtu"), ("port", 502)])
def test_tcp_only_keys_on_a_serial_machine_are_errors(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"machines\[0\]\.{key}: `{key}` is only for Modbus TCP"):
        _cfg([rtu_machine("/dev/ttyUSB0", 1, **{key: value})])


def test_bus_keys_and_defaults() -> None:
    cfg = _cfg(
        [
            rtu_machine("/dev/ttyUSB0", 1),
            {"id": "t", "protocol": "modbus", "host": "GW.local", "signals": [{"id": "s", "address": 0}]},
            {
                "id": "r",
                "protocol": "modbus",
                "host": "gw.local",
                "framer": "rtu",
                "request_gap": "30ms",
                "signals": [{"id": "s", "address": 0}],
            },
        ]
    )
    rtu, tcp, rtu_tcp = (m for m in cfg.machines if isinstance(m, ModbusMachine))
    assert (rtu.bus, tcp.bus, rtu_tcp.bus) == ("serial /dev/ttyUSB0", "tcp gw.local:502", "tcp gw.local:502 rtu")
    # tuple[object, ...]: inside a tuple, mypy's strict-equality check does not see that approx() equals a float
    expected: tuple[object, ...] = ("socket", 0.0, pytest.approx(0.03))
    assert (tcp.framer, tcp.request_gap, rtu_tcp.request_gap) == expected


def test_check_prints_buses_and_readable_signal_lines() -> None:
    signals = [
        {"id": "f", "address": 10, "type": "bit", "bit": 3},
        {"id": "name", "address": 20, "type": "string", "length": 4},
        {"id": "swapped", "address": 30, "type": "uint16", "byte_order": "BADC"},
        {"id": "wide", "address": 40, "type": "int32"},
    ]
    cfg = _cfg([rtu_machine("/dev/ttyUSB0", 1, signals, request_gap="20ms"), rtu_machine("/dev/ttyUSB0", 2)])
    lines = summary(cfg).splitlines()
    assert "  bus serial /dev/ttyUSB0, shared with u2 (one request at a time), 20ms quiet after each request" in lines
    assert "  bus serial /dev/ttyUSB0, shared with u1 (one request at a time)" in lines
    assert "  signal f: holding 10 bit 3" in lines
    assert "  signal name: holding 20 string of 4 registers" in lines
    assert "  signal swapped: holding 30 uint16 BADC" in lines
    assert "  signal wide: holding 40 int32 ABCD" in lines


async def test_a_reloaded_config_brings_new_serial_settings_once_the_bus_is_free(bus3: SimulatedMachine) -> None:
    old = modbus(rtu_machine(bus3.url, 1, baudrate=9600))
    new = modbus(rtu_machine(bus3.url, 1, baudrate=115200))
    bus = Bus(old)
    async with ModbusDriver(old, bus), ModbusDriver(new, bus) as driver:  # the old session runs: old settings
        assert await driver.read()
        assert bus._settings is old
    async with ModbusDriver(new, bus) as driver:  # everyone left: the next connection uses the new ones
        assert [s.value for s in await driver.read()] == [1, 10]
        assert bus._settings is new and bus.connects == 2


def test_pymodbus_replies_keep_their_data_bytes_and_check_the_byte_count() -> None:
    from pymodbus.exceptions import ModbusIOException
    from pymodbus.pdu.bit_message import ReadCoilsResponse
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    from drivers.modbus.rtu import _Coils, _DiscreteInputs, _HoldingRegisters, _InputRegisters

    registers = bytes([6, 0x12, 0x34, 0xFF, 0xFF, 0x00, 0x01])
    bits = bytes([2, 0b0000_0101, 0b1])
    for cls, data, theirs in (
        (_HoldingRegisters, registers, ReadHoldingRegistersResponse()),
        (_InputRegisters, registers, ReadHoldingRegistersResponse()),
        (_Coils, bits, ReadCoilsResponse()),
        (_DiscreteInputs, bits, ReadCoilsResponse()),
    ):
        ours = cls()
        ours.decode(data)
        theirs.decode(data)
        assert ours.raw == data[1:]
        assert str(len(data) - 1) + " bytes" in str(ours)
        for bad in (bytes([8, 1, 2, 3, 4]), bytes([3, 1, 2, 3, 4]), b""):
            with pytest.raises(ModbusIOException):
                cls().decode(bad)
