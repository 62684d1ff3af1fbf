"""``andon-agent check --connect`` for Modbus machines: read every signal once and show what it holds.

For an installer on site, per signal: the raw registers as the device sent them, the decoded
value as the rules will see it and, for the 32- and 64-bit types, the value in each of the four
byte orders, so the right ``byte_order`` is the one that shows the number the machine's display
shows. Each signal is read on its own (no merged reads: what a signal holds is easier to see).

A unit that does not answer is reported once and its remaining signals are not tried (each would
wait for the timeout). An RTU machine's serial port is checked first, so a missing adapter or a
user without the right to open it gets a plain sentence (with the ``dialout`` hint) instead of
pymodbus's "cannot open". Formatting is pure (:func:`signal_lines`); the reads use the agent's own
bus code (:class:`~drivers.modbus.bus.Bus`), the same connection the daemon would use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent.errors import ConnectionLost
from agent.model import Value
from drivers.modbus.bus import Bus, Buses, NoAnswer, port_problem
from drivers.modbus.codec import CodecError, decode, register_count, scaled
from drivers.modbus.config import ByteOrder, ModbusMachine, ModbusSignal
from drivers.modbus.driver import EXCEPTION_NAMES

ORDERS: tuple[ByteOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
_WIDE = frozenset({"int32", "uint32", "int64", "uint64", "float32", "float64"})


def _shown(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:.7g}"
    return repr(value) if isinstance(value, str) else str(value)


def _where(s: ModbusSignal) -> str:
    what = f"bit {s.bit}" if s.type == "bit" else s.type
    scale = f" x{s.scale:g}" if s.scale != 1 else ""
    scale += f" {s.offset:+g}" if s.offset else ""
    return f"  signal {s.id}: {s.table} {s.address} {what}{scale}"


def _value(s: ModbusSignal, registers: Sequence[int], order: ByteOrder) -> str:
    try:
        raw = decode(registers, s.type, order, bit=s.bit)
    except CodecError as exc:
        return f"cannot decode ({exc})"
    return _shown(scaled(raw, s.scale, s.offset))


def signal_lines(
    s: ModbusSignal, registers: Sequence[int] | None = None, bits: Sequence[bool] | None = None
) -> list[str]:
    """The lines for one signal read: registers (or coil/input bits) -> what ``check --connect`` prints."""
    if bits is not None:
        return [f"{_where(s)} = {bits[0]}"]
    assert registers is not None
    raw = "[" + ", ".join(f"0x{r:04X}" for r in registers) + "]"
    if s.type not in _WIDE:
        order = f" {s.byte_order}" if s.byte_order != "ABCD" else ""
        return [f"{_where(s)}{order}: registers {raw} = {_value(s, registers, s.byte_order)}"]
    lines = [f"{_where(s)}: registers {raw} = {_value(s, registers, s.byte_order)} ({s.byte_order})"]
    for order in ORDERS:
        mark = "   <- byte_order" if order == s.byte_order else ""
        lines.append(f"    as {order}: {_value(s, registers, order)}{mark}")
    return lines


def _unpack(s: ModbusSignal, data: bytes, count: int) -> tuple[list[int] | None, list[bool] | None]:
    if s.table in ("coil", "discrete"):
        return None, [bool(data[0] & 1)] if data else None
    if len(data) != 2 * count:
        return None, None
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)], None


async def _read_signal(bus: Bus, m: ModbusMachine, s: ModbusSignal) -> tuple[list[str], bool]:
    count = 1 if s.table in ("coil", "discrete") else register_count(s.type, s.length)
    reply = await bus.request(m, s.table, s.address, count)
    if reply.exception_code:
        name = EXCEPTION_NAMES.get(reply.exception_code, "unknown exception")
        return [f"{_where(s)}: the device refused: exception {reply.exception_code} ({name})"], False
    registers, bits = _unpack(s, reply.data, count)
    if registers is None and bits is None:
        return [f"{_where(s)}: a reply of the wrong length ({len(reply.data)} bytes)"], False
    return signal_lines(s, registers, bits), True


def _head(m: ModbusMachine) -> str:
    if m.serial is not None:
        where = f"rtu {m.serial} {m.baudrate} {m.parity}{m.bytesize}{m.stopbits}"
    else:
        where = f"{'rtu-over-tcp' if m.framer == 'rtu' else 'tcp'} {m.host}:{m.port}"
    return f"machine {m.id}: modbus {where} unit {m.unit}"


async def probe(m: ModbusMachine, bus: Bus) -> tuple[list[str], bool]:
    """Lines to print for one machine and whether every signal was read."""
    head = _head(m)
    problem = port_problem(m.serial) if m.serial is not None else None
    if problem is not None:
        return [f"{head}: {problem}"], False
    try:
        await bus.open(m)
    except ConnectionLost as exc:
        return [f"{head}: cannot connect: {exc}"], False
    lines, ok = [f"{head}: connected"], True
    try:
        for i, s in enumerate(m.signals):
            try:
                more, read = await _read_signal(bus, m, s)
            except NoAnswer as exc:
                left = len(m.signals) - i - 1
                rest = f" (the other {left} signal(s) were not tried)" if left else ""
                return [*lines, f"{_where(s)}: {exc}{rest}"], False
            lines += more
            ok = ok and read
    except ConnectionLost as exc:
        return [*lines, f"  the connection broke: {exc}"], False
    finally:
        bus.release()
    return lines, ok


async def probe_all(machines: Sequence[ModbusMachine]) -> tuple[list[str], bool]:
    """Probe every machine: machines on one bus one after another, buses at the same time; config order."""
    buses = Buses()
    groups: dict[str, list[ModbusMachine]] = {}
    for m in machines:
        groups.setdefault(m.bus, []).append(m)

    async def one_bus(group: list[ModbusMachine]) -> dict[str, tuple[list[str], bool]]:
        return {m.id: await probe(m, buses.get(m)) for m in group}

    try:
        results: dict[str, tuple[list[str], bool]] = {}
        for part in await asyncio.gather(*(one_bus(g) for g in groups.values())):
            results |= part
    finally:
        await buses.aclose()
    lines = [line for m in machines for line in results[m.id][0]]
    return lines, all(ok for _, ok in results.values())
