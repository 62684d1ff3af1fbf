"""The Modbus driver's I/O shell: one pymodbus client, the planned reads, decoding into samples.

Pure parts live beside it: :mod:`drivers.modbus.planner` (which reads to make) and
:mod:`drivers.modbus.codec` (registers to values). pymodbus's own retries and automatic reconnect
are turned off: every request is bounded by the machine's ``timeout``, and the agent's supervisor
reconnects with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.config import ModbusMachine, ModbusSignal
from agent.errors import ConnectionLost
from agent.model import Quality, Sample
from drivers.modbus.codec import CodecError, decode, register_count, scaled
from drivers.modbus.planner import ReadRequest, Span, excluded, plan_reads, split_request

log = logging.getLogger("andon.modbus")

ILLEGAL_ADDRESS = 2
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def spans_for(machine: ModbusMachine) -> dict[str, Span]:
    """Each signal's footprint in its table: registers, or one bit for coils and discrete inputs."""
    return {
        s.id: Span(s.table, s.address, 1 if s.table in ("coil", "discrete") else register_count(s.type, s.length), s.id)
        for s in machine.signals
    }


def plan_for(machine: ModbusMachine, refused: frozenset[tuple[Any, int]] = frozenset()) -> list[ReadRequest]:
    """The reads one poll of the machine makes (shown by ``andon-agent check``)."""
    return plan_reads(spans_for(machine).values(), max_gap=machine.max_gap, refused=refused)


def decode_signal(signal: ModbusSignal, words: Sequence[int] | None, bit: bool | None) -> tuple[Any, str | None]:
    """(value, None) or (None, why it is bad) for one signal's raw registers or bit."""
    try:
        raw: Any = bit if words is None else decode(words, signal.type, signal.byte_order, bit=signal.bit)
    except CodecError as exc:
        return None, str(exc)
    value = scaled(raw, signal.scale, signal.offset)
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"not a finite number ({value})"
    return value, None


class ModbusDriver:
    """One Modbus TCP or RTU connection to one machine. See :class:`drivers.base.Driver`."""

    def __init__(self, machine: ModbusMachine) -> None:
        self.machine = machine
        self._spans = spans_for(machine)
        self._signals = {s.id: s for s in machine.signals}
        self._refused: set[tuple[Any, int]] = set()
        self._plan = plan_for(machine)
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    @property
    def plan(self) -> list[ReadRequest]:
        return self._plan

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        m = self.machine
        common: dict[str, Any] = {"timeout": m.timeout, "retries": 0, "reconnect_delay": 0}
        if m.host is not None:
            return AsyncModbusTcpClient(m.host, port=m.port, framer=FramerType.SOCKET, **common)
        assert m.serial is not None
        return AsyncModbusSerialClient(
            m.serial,
            framer=FramerType.RTU,
            baudrate=m.baudrate,
            parity=m.parity,
            stopbits=m.stopbits,
            bytesize=m.bytesize,
            **common,
        )

    async def __aenter__(self) -> Self:
        self._client = self._new_client()
        where = (self.machine.host and f"{self.machine.host}:{self.machine.port}") or self.machine.serial
        try:
            async with asyncio.timeout(self.machine.timeout + 1.0):
                ok = await self._client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            self._close()
            raise ConnectionLost(self.machine.id, f"cannot connect to {where}: {exc or type(exc).__name__}") from exc
        if not ok:
            self._close()
            raise ConnectionLost(self.machine.id, f"cannot connect to {where}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _method(self, table: str) -> Callable[..., Awaitable[Any]]:
        c = self._client
        if c is None:
            raise ConnectionLost(self.machine.id, "not connected")
        return {
            "holding": c.read_holding_registers,
            "input": c.read_input_registers,
            "coil": c.read_coils,
            "discrete": c.read_discrete_inputs,
        }[table]

    async def _request(self, req: ReadRequest) -> Any:
        try:
            async with asyncio.timeout(self.machine.timeout + 0.5):
                return await self._method(req.table)(req.address, count=req.count, device_id=self.machine.unit)
        except (ConnectionException, ModbusIOException, TimeoutError, OSError) as exc:
            raise ConnectionLost(
                self.machine.id, f"{req.table} read at {req.address} failed: {exc or type(exc).__name__}"
            ) from exc

    async def read(self) -> list[Sample]:
        now = time.time()
        refused = excluded(self._spans.values(), self._refused)  # known before this poll's reads
        samples = [self._bad(key, now, "the device refuses this address") for key in refused]
        for req in list(self._plan):
            samples += await self._read_request(req, now)
        return samples

    async def _read_request(self, req: ReadRequest, now: float) -> list[Sample]:
        rr = await self._request(req)
        if not rr.isError():
            return self._decode(req, rr, now)
        code = int(rr.exception_code)
        if code == ILLEGAL_ADDRESS:
            halves = split_request(req, self._spans)
            if halves:  # find the refused addresses by bisection, keep reading the rest
                self._stop_bridging(req)
                out: list[Sample] = []
                for half in halves:
                    out += await self._read_request(half, now)
                return out
            self._refuse(req)
        reason = f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
        return [self._bad(key, now, reason) for key in req.keys]

    def _stop_bridging(self, req: ReadRequest) -> None:
        """A merged read was refused: never bridge its gaps again (the device may not map them)."""
        used = {
            a for k in req.keys for a in range(self._spans[k].address, self._spans[k].address + self._spans[k].count)
        }
        gaps = {(req.table, a) for a in range(req.address, req.address + req.count) if a not in used}
        if gaps - self._refused:
            self._refused |= gaps
            self._plan = plan_for(self.machine, frozenset(self._refused))

    def _refuse(self, req: ReadRequest) -> None:
        self._refused.update((req.table, a) for a in range(req.address, req.address + req.count))
        self._plan = plan_for(self.machine, frozenset(self._refused))
        log.error(
            "machine %s: the device refuses %s %d..%d (illegal data address): signal(s) %s are bad, "
            "the others are read without them",
            self.machine.id,
            req.table,
            req.address,
            req.address + req.count - 1,
            ", ".join(req.keys),
        )

    def _decode(self, req: ReadRequest, rr: Any, now: float) -> list[Sample]:
        out = []
        for key in req.keys:
            span, signal = self._spans[key], self._signals[key]
            off = span.address - req.address
            if req.table in ("coil", "discrete"):
                value, err = decode_signal(signal, None, bool(rr.bits[off]))
            else:
                value, err = decode_signal(signal, rr.registers[off : off + span.count], None)
            if err is not None:
                out.append(self._bad(key, now, err))
            else:
                out.append(Sample(self.machine.id, key, value, Quality.GOOD, now))
        return out

    def _bad(self, key: str, now: float, why: str) -> Sample:
        return Sample(self.machine.id, key, None, Quality.BAD, now, error=why)
