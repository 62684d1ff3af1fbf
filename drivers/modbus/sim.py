"""Simulated Modbus devices (pymodbus servers on 127.0.0.1) for the demo, tests and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.tcp import FUNCTIONS as FC

TABLE_OF_FC = {fc: table for table, fc in FC.items()}


class SimulatedMachine:
    """``async with SimulatedMachine(registers=200) as m:`` serves one device on ``m.port``.

    Holding and input registers are separate tables of ``registers`` words each, coils and discrete
    inputs ``registers * 16`` bits each. ``port=0`` picks a free port; pass the old port to restart
    a stopped machine on the same port.

    ``units=(1, 2, 3)`` serves several units (each with its own tables) instead of the one ``unit``;
    ``rtu=True`` speaks RTU frames over TCP, as a serial line behind a transparent gateway would:
    reach it with a serial client on :attr:`url` (``socket://127.0.0.1:<port>``, pyserial's
    socket URL) or with a TCP client using the RTU framer.

    For fault tests: ``refused`` holds (table, address) pairs the device answers with "illegal data
    address"; ``exception`` makes it answer every request with that Modbus exception code, ``script``
    answers the next requests with its codes, one each, first to last; ``max_count`` refuses (as an
    illegal data address) any read of more registers or bits than that; ``dead``
    holds units that never answer (as a dead slave on RS-485); ``requests`` counts the requests
    received, ``requests_by_unit`` per unit, ``replies`` the answers sent (``wait_requests`` and
    ``wait_replies`` wait for more).
    """

    def __init__(
        self,
        *,
        registers: int = 200,
        unit: int = 1,
        port: int = 0,
        host: str = "127.0.0.1",
        units: Iterable[int] | None = None,
        rtu: bool = False,
    ) -> None:
        self.registers, self.unit, self.port, self.host = registers, unit, port, host
        self.units = tuple(units) if units is not None else (unit,)
        self.rtu = rtu
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.refused: set[tuple[str, int]] = set()
        self.exception: int | None = None
        self.dead: set[int] = set()
        self.script: list[int] = []
        self.max_count: int | None = None
        self.requests = 0
        self.replies = 0
        self.requests_by_unit: dict[int, int] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._reply_waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def url(self) -> str:
        """The pyserial URL of an ``rtu=True`` machine."""
        return f"socket://{self.host}:{self.port}"

    def _action_for(self, unit: int) -> Any:
        async def action(fc: int, start: int, address: int, count: int, registers: Any, values: Any) -> ExcCodes | None:
            if unit in self.dead:
                raise NoSuchIdException(f"unit {unit} is dead")  # with ignore_missing_devices: no reply
            if self.script:
                return ExcCodes(self.script.pop(0))
            if self.exception is not None:
                return ExcCodes(self.exception)
            if self.max_count is not None and count > self.max_count:
                return ExcCodes.ILLEGAL_ADDRESS
            table = TABLE_OF_FC.get(fc)
            if table and any((table, a) in self.refused for a in range(address, address + count)):
                return ExcCodes.ILLEGAL_ADDRESS
            return None

        return action

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            self.replies += 1
            for target, fut in list(self._reply_waiters):
                if self.replies >= target and not fut.done():
                    fut.set_result(None)
        else:
            self.requests += 1
            self.requests_by_unit[pdu.dev_id] = self.requests_by_unit.get(pdu.dev_id, 0) + 1
            for target, fut in list(self._waiters):
                if self.requests >= target and not fut.done():
                    fut.set_result(None)
        return pdu

    async def wait_requests(self, n: int) -> None:
        """Wait until the machine has received ``n`` more requests."""
        await self._wait(self._waiters, self.requests + n)

    async def wait_replies(self, n: int) -> None:
        """Wait until the machine has answered ``n`` more requests (a write is then in its tables)."""
        await self._wait(self._reply_waiters, self.replies + n)

    @staticmethod
    async def _wait(waiters: list[tuple[int, asyncio.Future[None]]], target: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (target, fut)
        waiters.append(entry)
        try:
            await fut
        finally:
            waiters.remove(entry)

    def _device(self, unit: int) -> SimDevice:
        n = self.registers
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, count=n, values=0, datatype=DataType.BITS)],  # n words of 16 coils
                [SimData(0, count=n, values=0, datatype=DataType.BITS)],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action_for(unit),
        )

    async def start(self) -> None:
        devices = [self._device(u) for u in self.units]
        server: ModbusTcpServer | ModbusSerialServer
        if self.rtu:
            server = ModbusSerialServer(
                devices,
                port=self.url,
                framer=FramerType.RTU,
                ignore_missing_devices=True,
                trace_pdu=self._trace,
            )
        else:
            server = ModbusTcpServer(
                devices, address=(self.host, self.port), ignore_missing_devices=True, trace_pdu=self._trace
            )
        self._server = server
        await server.serve_forever(background=True)
        transport: Any = server.transport
        self.port = transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> SimulatedMachine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def set(self, table: str, address: int, values: list[int] | list[bool], *, unit: int | None = None) -> None:
        """Write raw registers (or bits) into a table, as the machine's PLC would."""
        if self._server is None:
            raise RuntimeError("simulated machine is stopped")
        await self._server.async_setValues(self.units[0] if unit is None else unit, FC[table], address, list(values))

    async def get(self, table: str, address: int, count: int = 1, *, unit: int | None = None) -> list[Any]:
        if self._server is None:
            raise RuntimeError("simulated machine is stopped")
        return list(
            await self._server.async_getValues(self.units[0] if unit is None else unit, FC[table], address, count)
        )
