"""Writes the lamps of a Modbus TCP stack light with pymodbus's client: the agent's only write to a device.

Used only for a ``[[lights]]`` entry, which the config accepts only with ``write = true``.
Imported only when one is configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from agent.errors import LightError

LampWrite = tuple[str, int, bool]  # (table "coil" | "holding", address, on)


class ModbusLampWriter:
    """One connection to one stack light.

    Caller guarantees: :meth:`write` only inside ``async with`` and never concurrently.
    ``__aenter__`` connects or raises :class:`~agent.errors.LightError`; :meth:`write` writes each
    lamp (a coil, or a holding register 1/0) or raises :class:`~agent.errors.LightError`, bounded by
    the light's ``timeout`` per write. pymodbus's own retries and reconnect are off: the caller
    backs off and connects again.
    """

    def __init__(self, light: str, host: str, port: int, *, unit: int, timeout: float) -> None:
        self.light, self.host, self.port, self.unit, self.timeout = light, host, port, unit, timeout
        self._client: AsyncModbusTcpClient | None = None

    async def __aenter__(self) -> Self:
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout, retries=0, reconnect_delay=0)
        try:
            async with asyncio.timeout(self.timeout * 2):
                connected = await client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            client.close()
            raise LightError(self.light, f"cannot connect to {self.host}:{self.port}")
        self._client = client
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def write(self, writes: Sequence[LampWrite]) -> None:
        assert self._client is not None, "write() outside async with"
        client = self._client
        for table, address, on in writes:
            try:
                async with asyncio.timeout(self.timeout * 2):
                    if table == "coil":
                        reply = await client.write_coil(address, on, device_id=self.unit)
                    else:
                        reply = await client.write_register(address, int(on), device_id=self.unit)
            except (ModbusException, OSError, TimeoutError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                raise LightError(self.light, f"writing {table} {address} failed: {exc or 'timeout'}") from exc
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # pymodbus's wait_for can swallow a cancel (3.11)
                raise asyncio.CancelledError
            if reply.isError():
                raise LightError(
                    self.light, f"refused the write of {table} {address} (Modbus exception {reply.exception_code})"
                )
