"""The lean Modbus TCP client (drivers/modbus/tcp.py), through the Bus that uses it.

Well-behaved replies are tested against pymodbus servers in test_modbus_driver.py and
test_modbus_bus.py (every type and table, exception codes, silent units, restarts). Here a scripted
peer on a real socket sends what pymodbus servers never do: late replies, replies without the
transaction id, garbage, replies that do not fit, replies cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from agent.errors import ConnectionLost
from drivers.modbus.bus import Bus, NoAnswer
from drivers.modbus.config import ModbusMachine
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.sim import SimulatedMachine
from drivers.modbus.tcp import Reply, TcpReader, data_size

ROOT = Path(__file__).resolve().parent.parent


class Request(NamedTuple):
    tid: int
    unit: int
    function: int
    address: int
    quantity: int  # of registers or bits (the spec's name; `count` would shadow tuple.count)


def frame(tid: int, unit: int, pdu: bytes, *, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


def registers_reply(req: Request, values: list[int], *, tid: int | None = None) -> bytes:
    data = struct.pack(f">{len(values)}H", *values)
    return frame(req.tid if tid is None else tid, req.unit, bytes([req.function, len(data)]) + data)


Script = Callable[[Request], bytes | None]


class Peer:
    """A Modbus TCP peer on 127.0.0.1 that answers each request with ``script(request)``: the bytes
    to send, or None to stay silent. ``b"CLOSE"`` hangs up instead."""

    script: Script

    def answer_in_turn(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, one each, first to last."""
        queue = list(scripts)
        self.script = lambda req: queue.pop(0)(req)

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                tid, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", await reader.readexactly(12))
                req = Request(tid, unit, function, address, count)
                self.requests.append(req)
                out = self.script(req)
                if out == b"CLOSE":
                    break
                if out:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def machine_on(port: int, **kw: Any) -> ModbusMachine:
    doc = {
        "id": "press-7",
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "200ms",
        "signals": [{"id": "wear", "register": "holding", "address": 0}, {"id": "temp", "address": 1}],
        **kw,
    }
    return ModbusMachine.model_validate(doc)


@contextlib.asynccontextmanager
async def open_bus(m: ModbusMachine) -> AsyncIterator[Bus]:
    """A bus joined by ``m``, left at the end."""
    bus = Bus(m)
    await bus.open(m)
    try:
        yield bus
    finally:
        bus.release()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async with Peer(lambda req: registers_reply(req, [req.tid, 7][: req.quantity])) as p:
        yield p


async def test_a_late_reply_is_dropped_and_replies_stay_in_step(peer: Peer) -> None:
    late: list[bytes] = []

    def script(req: Request) -> bytes | None:
        if len(peer.requests) == 1:  # the first request: answered only after the next one came
            late.append(registers_reply(req, [111, 111]))
            return None
        return b"".join(late) + registers_reply(req, [222, 333])  # the stale reply, then the right one

    peer.script = script
    m = machine_on(peer.port)
    async with open_bus(m) as bus:
        with pytest.raises(NoAnswer, match=r"press-7'.*: no answer to holding 0\.\.1 within 0\.2s"):
            await bus.request(m, "holding", 0, 2)
        reply = await bus.request(m, "holding", 0, 2)
        assert reply == Reply(struct.pack(">2H", 222, 333))
        assert peer.connections == 1  # a timeout with nothing received keeps the connection


async def test_a_device_that_does_not_echo_the_transaction_id_is_understood(peer: Peer) -> None:
    peer.script = lambda req: registers_reply(req, [5, 6], tid=0)
    m = machine_on(peer.port)
    async with ModbusDriver(m) as driver:
        assert [s.value for s in await driver.read()] == [5, 6]
        assert [s.value for s in await driver.read()] == [5, 6]
    assert [r.tid for r in peer.requests] == [1, 2]  # our ids still count up


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda req: frame(req.tid, req.unit + 1, bytes([3, 2, 0, 1])), "reply from unit 2 to a request for unit 1"),
        (lambda req: frame(req.tid, req.unit, bytes([4, 2, 0, 1])), "reply with function code 4 to a request with 3"),
        (lambda req: frame(req.tid, req.unit, bytes([3, 4, 0, 1])), "reply says 4 data bytes and has 2"),
        (lambda req: frame(req.tid, req.unit, bytes([3])), "reply says None data bytes and has 0"),
    ],
)
async def test_a_reply_that_does_not_fit_fails_the_request_and_the_connection_stays(
    peer: Peer, answer: Script, why: str
) -> None:
    peer.answer_in_turn(answer, lambda req: registers_reply(req, [1, 2]))
    m = machine_on(peer.port)
    async with open_bus(m) as bus:
        where = f"unit 1 on tcp 127.0.0.1:{peer.port}"
        with pytest.raises(NoAnswer, match=f"press-7': {where}: no valid answer to holding 0..1: {why}$"):
            await bus.request(m, "holding", 0, 2)
        assert await bus.request(m, "holding", 0, 2) == Reply(struct.pack(">2H", 1, 2))
        assert peer.connections == 1


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a Modbus TCP frame \\(protocol id 21584, length 12081\\)"),
        (frame(1, 1, bytes([3, 2, 0, 1]), protocol=1), "not a Modbus TCP frame \\(protocol id 1, length 5\\)"),
        (struct.pack(">HHHB", 1, 0, 1, 1), "not a Modbus TCP frame \\(protocol id 0, length 1\\)"),
        (struct.pack(">HHHB", 1, 0, 300, 1), "not a Modbus TCP frame \\(protocol id 0, length 300\\)"),
    ],
)
async def test_garbage_closes_the_connection_and_the_next_request_reconnects(
    peer: Peer, garbage: bytes, why: str
) -> None:
    peer.answer_in_turn(lambda req: garbage, lambda req: registers_reply(req, [3, 4]))
    m = machine_on(peer.port)
    async with open_bus(m) as bus:
        with pytest.raises(NoAnswer, match=f"press-7': .*: no valid answer to holding 0..1: {why}$"):
            await bus.request(m, "holding", 0, 2)
        assert not bus.connected
        assert await bus.request(m, "holding", 0, 2) == Reply(struct.pack(">2H", 3, 4))
        assert peer.connections == 2 and bus.connects == 2


async def test_a_reply_cut_off_by_the_timeout_closes_the_connection(peer: Peer) -> None:
    peer.answer_in_turn(
        lambda req: registers_reply(req, [9, 9])[:10],  # the header and a part of the data, then silence
        lambda req: registers_reply(req, [5, 6]),
    )
    m = machine_on(peer.port)
    async with open_bus(m) as bus:
        with pytest.raises(NoAnswer, match="no answer"):
            await bus.request(m, "holding", 0, 2)
        assert not bus.connected  # what comes next on that stream cannot be trusted
        assert await bus.request(m, "holding", 0, 2) == Reply(struct.pack(">2H", 5, 6))
        assert peer.connections == 2


async def test_the_peer_hanging_up_mid_request_is_connection_lost_then_reconnects(peer: Peer) -> None:
    peer.answer_in_turn(lambda req: b"CLOSE", lambda req: registers_reply(req, [1, 1]))
    m = machine_on(peer.port)
    async with ModbusDriver(m) as driver:
        with pytest.raises(
            ConnectionLost, match=r"press-7': tcp 127\.0\.0\.1:\d+: connection lost reading holding 0\.\.1"
        ):
            await driver.read()
        assert [s.value for s in await driver.read()] == [1, 1]
    assert peer.connections == 2


async def test_a_reply_with_fewer_registers_than_asked_gives_bad_samples(peer: Peer) -> None:
    peer.script = lambda req: registers_reply(req, [1])
    async with ModbusDriver(machine_on(peer.port)) as driver:
        samples = await driver.read()
    assert [s.good for s in samples] == [False, False]
    assert samples[0].error == "a reply of the wrong length (2 bytes for 2 registers)"


async def test_exception_replies_come_back_as_their_code(peer: Peer) -> None:
    peer.script = lambda req: frame(req.tid, req.unit, bytes([req.function | 0x80, 4]))
    m = machine_on(peer.port)
    async with open_bus(m) as bus:
        assert await bus.request(m, "holding", 0, 2) == Reply(b"", 4)
        assert await bus.request(m, "coil", 0, 9) == Reply(b"", 4)
        assert [r.function for r in peer.requests] == [3, 1]


async def test_every_table_reads_the_same_bytes_as_pymodbus_sends(machine: SimulatedMachine) -> None:
    await machine.set("holding", 3, [0x1234, 0xFFFF])
    await machine.set("input", 5, [42])
    await machine.set("coil", 0, [True, False, True] + [False] * 6 + [True])
    await machine.set("discrete", 8, [True])
    reader = TcpReader("127.0.0.1", machine.port)
    await reader.connect()
    try:
        assert await reader.read("holding", 3, 2, 1) == Reply(bytes([0x12, 0x34, 0xFF, 0xFF]))
        assert await reader.read("input", 5, 1, 1) == Reply(bytes([0, 42]))
        assert await reader.read("coil", 0, 10, 1) == Reply(bytes([0b101, 0b10]))
        assert await reader.read("discrete", 8, 1, 1) == Reply(bytes([1]))
        assert await reader.read("holding", 199, 2, 1) == Reply(b"", 2)  # past the end: illegal address
    finally:
        reader.close()


# -- framing, byte by byte (no socket: the protocol is fed directly) ------------------------------


class Transport(asyncio.Transport):
    """Just enough of a transport to feed a TcpReader by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def sent_request(
    reader: TcpReader, transport: Transport, table: str, count: int
) -> tuple[asyncio.Task[Reply], Request]:
    """Start a read on ``reader`` and return it with the request it wrote."""
    task = asyncio.create_task(reader.read(table, 0, count, 1))
    await asyncio.sleep(0)  # the task runs up to its wait for the reply, having written the request
    tid, _, _, unit, function, address, count = struct.unpack(">HHHBBHH", transport.sent[-1])
    return task, Request(tid, unit, function, address, count)


async def test_a_reply_arriving_byte_by_byte_and_frames_sharing_a_segment() -> None:
    reader, transport = TcpReader("unused", 0), Transport()
    reader.connection_made(transport)
    first, req = await sent_request(reader, transport, "holding", 2)
    for byte in registers_reply(req, [1, 2]):
        reader.data_received(bytes([byte]))
    assert await first == Reply(bytes([0, 1, 0, 2]))

    second, req2 = await sent_request(reader, transport, "input", 1)
    stale = registers_reply(req, [7, 7])  # a reply with the first request's id
    reader.data_received(stale + registers_reply(req2, [9]))
    assert await second == Reply(bytes([0, 9]))
    assert not transport.closed


async def test_transaction_ids_count_up_and_skip_zero_when_they_wrap() -> None:
    reader, transport = TcpReader("unused", 0), Transport()
    reader.connection_made(transport)
    reader._tid = 0xFFFE
    ids = []
    for _ in range(3):
        task, req = await sent_request(reader, transport, "holding", 1)
        reader.data_received(registers_reply(req, [1]))
        await task
        ids.append(req.tid)
    assert ids == [0xFFFF, 1, 2]


def test_data_size_of_each_table() -> None:
    assert [data_size(t, 9) for t in ("coil", "discrete", "holding", "input")] == [2, 2, 18, 18]
    assert data_size("coil", 2000) == 250 and data_size("holding", 125) == 250


async def test_reading_without_a_connection_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError):
        await TcpReader("127.0.0.1", 9).read("holding", 0, 1, 1)


def test_a_modbus_tcp_agent_runs_without_importing_pymodbus() -> None:
    code = """
import asyncio, struct, sys
from drivers.modbus.config import ModbusMachine
from drivers.registry import Drivers

async def answer(reader, writer):
    tid = struct.unpack(">H", (await reader.readexactly(12))[:2])[0]
    writer.write(struct.pack(">HHHBBBH", tid, 0, 5, 1, 3, 2, 42))
    await writer.drain()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    machine = ModbusMachine.model_validate(
        {"id": "m", "protocol": "modbus", "host": "127.0.0.1", "port": port, "signals": [{"id": "s", "address": 0}]}
    )
    drivers = Drivers()
    async with drivers(machine) as driver:
        assert [s.value for s in await driver.read()] == [42]
    await drivers.aclose()
    server.close()

asyncio.run(main())
assert not [m for m in sys.modules if m.startswith("pymodbus")], "pymodbus was imported"
from drivers.modbus.bus import Bus
rtu = ModbusMachine.model_validate(
    {"id": "r", "protocol": "modbus", "serial": "/dev/null", "signals": [{"id": "s", "address": 0}]}
)
async def rtu_reader():
    Bus(rtu)._new_reader()
asyncio.run(rtu_reader())
assert "pymodbus" in sys.modules, "an RTU machine uses pymodbus"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
