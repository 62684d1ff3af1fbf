"""The Modbus protocol as the agent sees it: its model, its drivers (sharing buses), its ``check`` lines.

Importing this module imports no protocol library: plain Modbus TCP uses the lean client in
:mod:`drivers.modbus.tcp`; pymodbus is imported by the bus only when an RTU or RTU-over-TCP
connection is opened.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.config.base import MachineBase
from drivers.base import Driver, Probe, ProtocolPlugin
from drivers.modbus.bus import Buses
from drivers.modbus.config import ModbusMachine, ModbusSignal, check_buses
from drivers.modbus.driver import ModbusDriver, spans_for
from drivers.modbus.planner import plan_reads
from drivers.modbus.probe import probe_all


class ModbusDrivers:
    """The Modbus drivers of one agent run (see :class:`drivers.base.MachineDrivers`).

    Machines with the same :attr:`~drivers.modbus.config.ModbusMachine.bus` (one serial port, or
    one ``host:port`` and framer) share one connection, a :class:`drivers.modbus.bus.Bus`: requests
    on it go one at a time, and a unit that does not answer does not close it for the others. A read
    on a shared bus may also wait for the requests of the other units ahead of it (each bounded by
    its machine's ``timeout``).
    """

    def __init__(self) -> None:
        self._buses = Buses()

    def __call__(self, machine: ModbusMachine) -> Driver:
        return ModbusDriver(machine, self._buses.get(machine))

    async def aclose(self) -> None:
        await self._buses.aclose()


def _signal(s: ModbusSignal) -> str:
    if s.type == "bit":
        what = f"bit {s.bit}"
    elif s.type == "string":
        what = f"string of {s.length} register{'s' if s.length != 1 else ''}"
    else:
        what = s.type
    wide = s.type not in ("bool", "bit", "int16", "uint16", "string")
    ordered = s.table in ("holding", "input") and (wide or s.byte_order != "ABCD")
    extra = f" {s.byte_order}" if ordered else ""
    extra += f" x{s.scale:g}" if s.scale != 1 else ""
    extra += f" {s.offset:+g}" if s.offset else ""
    return f"  signal {s.id}: {s.table} {s.address} {what}{extra}"


def describe(m: ModbusMachine, machines: Sequence[MachineBase]) -> list[str]:
    """``check``'s lines: the connection, the bus it shares, each signal, and the reads each poll makes."""
    if m.serial is not None:
        where = f"modbus rtu {m.serial} {m.baudrate} {m.parity}"
    else:
        where = f"modbus {'rtu-over-tcp' if m.framer == 'rtu' else 'tcp'} {m.host}:{m.port}"
    lines = [
        f"machine {m.id}: {where} unit {m.unit}, poll every {m.poll_interval:g}s, offline after {m.offline_after:g}s"
    ]
    mates = [o.id for o in machines if isinstance(o, ModbusMachine) and o.bus == m.bus and o is not m]
    if mates or m.request_gap:
        shared = f", shared with {', '.join(mates)} (one request at a time)" if mates else ""
        gap = f", {m.request_gap * 1000:g}ms quiet after each request" if m.request_gap else ""
        lines.append(f"  bus {m.bus}{shared}{gap}")
    lines += [_signal(s) for s in m.signals]
    plan = plan_reads(spans_for(m).values(), max_gap=m.max_gap)
    lines.append(f"  each poll makes {len(plan)} read(s):")
    lines += [f"    {req}" for req in plan]
    return lines


def devices(m: ModbusMachine) -> list[tuple[str, str]]:
    """The serial port an RTU machine opens (not a pyserial URL such as ``socket://host:port``)."""
    return [("serial", m.serial)] if m.serial is not None and "://" not in m.serial else []


PLUGIN = ProtocolPlugin(
    name="modbus",
    title="Modbus",
    config=ModbusMachine,
    drivers=ModbusDrivers,
    describe=describe,
    cross_check=check_buses,
    devices=devices,
    probe=Probe(
        run=probe_all, all_read="every Modbus signal was read", not_all_read="not every Modbus signal was read"
    ),
)
