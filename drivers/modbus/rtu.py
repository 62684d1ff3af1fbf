"""pymodbus's client behind the bus's :class:`~drivers.modbus.bus.Reader` interface: serial RTU
and RTU-over-TCP, which the lean :class:`~drivers.modbus.tcp.TcpReader` does not speak.

Imported only when a machine uses them, so a Modbus TCP agent starts without pymodbus.
"""

from __future__ import annotations

from typing import Any, Final

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from drivers.modbus.bus import port_problem
from drivers.modbus.config import ModbusMachine
from drivers.modbus.tcp import BadReply, Reply

__all__ = ["PymodbusReader"]

_CLIENT_TIMEOUT: Final = 60.0  # pymodbus's own timeout; each call is bounded by the bus's instead
_NEVER: Final = 1 << 30  # "max no responses" before pymodbus closes the connection itself
_READS: Final = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


class _Raw:
    """A pymodbus read response that keeps the reply's data bytes as they came (for :class:`Reply`),
    instead of pymodbus's per-value unpacking and its formatting of every reply for a debug line
    (logged or not). Registered per client with ``client.register``: no global state."""

    raw = b""

    def decode(self, data: bytes) -> None:
        if not data or data[0] != len(data) - 1:
            raise ModbusIOException(f"byte count {data[0] if data else None} does not fit a reply of {len(data)} bytes")
        self.raw = data[1:]

    def __str__(self) -> str:
        return f"{self.__class__.__name__}({len(self.raw)} bytes)"


class _Coils(_Raw, ReadCoilsResponse):
    pass


class _DiscreteInputs(_Raw, ReadDiscreteInputsResponse):
    pass


class _HoldingRegisters(_Raw, ReadHoldingRegistersResponse):
    pass


class _InputRegisters(_Raw, ReadInputRegistersResponse):
    pass


class PymodbusReader:
    """pymodbus's client as a :class:`~drivers.modbus.bus.Reader`. Its own retries, its closing of
    the connection after repeated timeouts and its automatic reconnect are all turned off."""

    def __init__(self, machine: ModbusMachine) -> None:
        common: dict[str, Any] = {"timeout": _CLIENT_TIMEOUT, "retries": 0, "reconnect_delay": 0}
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if machine.serial is None:
            assert machine.host is not None
            framer = FramerType.RTU if machine.framer == "rtu" else FramerType.SOCKET
            client = AsyncModbusTcpClient(machine.host, port=machine.port, framer=framer, **common)
        else:
            client = AsyncModbusSerialClient(
                machine.serial,
                framer=FramerType.RTU,
                baudrate=machine.baudrate,
                parity=machine.parity,
                stopbits=machine.stopbits,
                bytesize=machine.bytesize,
                **common,
            )
        client.set_max_no_responses(_NEVER)
        for response in (_Coils, _DiscreteInputs, _HoldingRegisters, _InputRegisters):
            client.register(response)
        self._client = client
        self._port = machine.serial

    @property
    def connected(self) -> bool:
        return self._client.connected

    async def connect(self) -> None:
        try:
            ok = await self._client.connect()
        except ModbusException as exc:
            raise ConnectionRefusedError(str(exc)) from exc
        if not ok:
            problem = port_problem(self._port) if self._port is not None else None
            raise ConnectionRefusedError(problem or "the connection was refused or the port cannot be opened")

    async def read(self, table: str, address: int, count: int, unit: int) -> Reply:
        try:
            rr = await getattr(self._client, _READS[table])(address, count=count, device_id=unit)
        except ModbusIOException as exc:
            raise BadReply(str(exc)) from exc
        except ConnectionException as exc:
            raise ConnectionResetError(str(exc)) from exc
        if rr.isError():
            return Reply(b"", int(rr.exception_code))
        return Reply(rr.raw)

    def close(self) -> None:
        self._client.close()
