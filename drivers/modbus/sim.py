"""A simulated Modbus machine (pymodbus server on 127.0.0.1) for the demo, tests and benchmarks."""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
TABLE_OF_FC = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class SimulatedMachine:
    """``async with SimulatedMachine(registers=200) as m:`` serves one device on ``m.port``.

    Holding and input registers are separate tables of ``registers`` words each, coils and discrete
    inputs ``registers * 16`` bits each. ``port=0`` picks a free port; pass the old port to restart
    a stopped machine on the same port.

    For fault tests: ``refused`` holds (table, address) pairs the device answers with "illegal data
    address"; ``exception`` makes it answer every request with that Modbus exception code;
    ``requests`` counts the requests it received.
    """

    def __init__(self, *, registers: int = 200, unit: int = 1, port: int = 0, host: str = "127.0.0.1") -> None:
        self.registers, self.unit, self.port, self.host = registers, unit, port, host
        self._server: ModbusTcpServer | None = None
        self.refused: set[tuple[str, int]] = set()
        self.exception: int | None = None
        self.requests = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def _action(
        self, fc: int, start: int, address: int, count: int, registers: Any, values: Any
    ) -> ExcCodes | None:
        if self.exception is not None:
            return ExcCodes(self.exception)
        table = TABLE_OF_FC.get(fc)
        if table and any((table, a) in self.refused for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests += 1
            for target, fut in list(self._waiters):
                if self.requests >= target and not fut.done():
                    fut.set_result(None)
        return pdu

    async def wait_requests(self, n: int) -> None:
        """Wait until the machine has received ``n`` more requests."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.requests + n, fut)
        self._waiters.append(entry)
        try:
            await fut
        finally:
            self._waiters.remove(entry)

    def _device(self) -> SimDevice:
        n = self.registers
        bits = SimData(0, count=n, values=0, datatype=DataType.BITS)  # n words of 16 bits
        words = SimData(0, count=n, values=0, datatype=DataType.REGISTERS)
        return SimDevice(
            id=self.unit,
            simdata=(
                [bits],
                [SimData(0, count=n, values=0, datatype=DataType.BITS)],
                [words],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def start(self) -> None:
        self._server = ModbusTcpServer(self._device(), address=(self.host, self.port), trace_pdu=self._trace)
        await self._server.serve_forever(background=True)
        transport: Any = self._server.transport
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

    async def set(self, table: str, address: int, values: list[int] | list[bool]) -> None:
        """Write raw registers (or bits) into a table, as the machine's PLC would."""
        if self._server is None:
            raise RuntimeError("simulated machine is stopped")
        await self._server.async_setValues(self.unit, FC[table], address, list(values))

    async def get(self, table: str, address: int, count: int = 1) -> list[Any]:
        if self._server is None:
            raise RuntimeError("simulated machine is stopped")
        return list(await self._server.async_getValues(self.unit, FC[table], address, count))
