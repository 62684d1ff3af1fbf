"""The Modbus driver's I/O shell: the planned reads of one machine over its bus, decoded into samples.

Pure parts live beside it: :mod:`drivers.modbus.planner` (which reads to make) and
:mod:`drivers.modbus.codec` (registers to values). The connection is a :class:`~drivers.modbus.bus.Bus`,
shared with the other machines (units) on the same serial port or TCP connection when the driver
comes from a :class:`~drivers.modbus.bus.Buses` registry (the Modbus plugin's ``ModbusDrivers`` makes
one per agent run); without one, the driver has a private bus.

How a poll handles what the device answers:

* a good reply: each signal is decoded (NaN and infinity give a bad sample);
* a reply of the wrong length: the request's signals are bad for this poll;
* exception 2, illegal data address, to a merged read: the read is split in halves, recursively,
  until the refused addresses are found; only the signals covering them are bad (one ERROR line
  per poll names them), and from then on the plan avoids them and does not bridge a gap the
  device refused. When every part of a refused read is answered, the refused address was in a
  gap the halves left out, or the device takes no read that long: the plan stops bridging that
  gap, or uses shorter reads. A refused signal is not given up for the connection's life (a TCP
  connection may last months, and a PLC program change can add the register): it is read alone
  again after the machine's ``refused_retry`` (5 minutes), then at doubling intervals up to
  :data:`REFUSED_RETRY_MAX`; once answered it joins the poll's merged reads again (INFO line).
  Refused gaps and read lengths stay learned for the connection: they cost requests, never data;
* exception 6, device busy (and 5, acknowledge): retried once in the same poll after a short
  pause (:func:`busy_pause`); if still busy, the signals are bad for this poll and the next poll
  reads them again;
* exception 10/11, gateway path unavailable / target failed to respond: the unit behind the
  gateway is unreachable, so the rest of this poll's reads are skipped (bad samples). After
  :data:`GATEWAY_POLLS` such polls in a row :meth:`ModbusDriver.read` raises ``ConnectionLost``, so
  the runtime backs the unit off like a unit that does not answer;
* any other exception (device failure 4, illegal function 1, ...): the request's signals are bad
  for this poll, the next poll is the retry;
* no answer within ``timeout``: :class:`~drivers.modbus.bus.NoAnswer` (a ``ConnectionLost``); the
  runtime backs this machine off, with capped jittered delays, while the bus stays open for the
  other units.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

from agent.errors import ConnectionLost
from agent.model import Quality, Sample
from drivers.modbus.bus import Bus
from drivers.modbus.codec import Block, CodecError, Decoder, compile_decoder, register_count
from drivers.modbus.config import ModbusMachine, ModbusSignal
from drivers.modbus.planner import MAX_BITS, MAX_REGISTERS, ReadRequest, Span, plan_reads, split_request
from drivers.modbus.tcp import data_size

log = logging.getLogger("andon.modbus")

ILLEGAL_ADDRESS: Final = 2
BUSY: Final = frozenset({5, 6})  # acknowledge, device busy: the device asks us to come back shortly
GATEWAY: Final = frozenset({10, 11})  # gateway path unavailable, gateway target failed to respond
GATEWAY_POLLS: Final = 3
REFUSED_RETRY_MAX: Final = 3600.0  # the longest wait between two probes of a refused address
EXCEPTION_NAMES: Final = {
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
_BIT_TABLES: Final = frozenset({"coil", "discrete"})


class _Item(NamedTuple):
    """How to decode one signal from a register reply: ``decoder(block, at)`` (scaled already)."""

    key: str
    decoder: Decoder
    at: int  # the signal's first register in the reply


def _decoder(signal: ModbusSignal) -> Decoder:
    """The signal's compiled decoder, scale and offset included."""
    return compile_decoder(
        signal.type, signal.byte_order, bit=signal.bit, length=signal.length, scale=signal.scale, offset=signal.offset
    )


def busy_pause(machine: ModbusMachine) -> float:
    """How long to wait before the one retry of a read the device answered "busy"."""
    return min(0.1, machine.poll_interval / 4)


def spans_for(machine: ModbusMachine) -> dict[str, Span]:
    """Each signal's footprint in its table: registers, or one bit for coils and discrete inputs."""
    return {
        s.id: Span(s.table, s.address, 1 if s.table in _BIT_TABLES else register_count(s.type, s.length), s.id)
        for s in machine.signals
    }


def plan_for(
    machine: ModbusMachine,
    refused: frozenset[tuple[Any, int]] = frozenset(),
    *,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """The reads one poll of the machine makes (shown by ``andon-agent check``)."""
    return plan_reads(
        spans_for(machine).values(),
        max_gap=machine.max_gap,
        refused=refused,
        max_registers=max_registers,
        max_bits=max_bits,
    )


@dataclass
class _Retry:
    """When a refused signal is read alone again (monotonic time), and the wait after that."""

    due: float
    wait: float


class _Unreachable(Exception):
    """A gateway said the unit cannot be reached: skip the rest of this poll."""


def _exception_text(code: int) -> str:
    return f"Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


class ModbusDriver:
    """One Modbus machine (one unit) on its bus. See :class:`drivers.base.Driver`."""

    def __init__(
        self, machine: ModbusMachine, bus: Bus | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.machine = machine
        self._monotonic = monotonic
        self._bus = bus if bus is not None else Bus(machine)
        self._spans = spans_for(machine)
        # Compiled here, so a signal the codec refuses fails at start, not in the first poll.
        self._decoders = {s.id: _decoder(s) for s in machine.signals if s.table not in _BIT_TABLES}
        self._layouts: dict[ReadRequest, list[_Item]] = {}  # per request: how to decode its reply
        self._used: dict[str, set[int]] = {}  # addresses some signal needs, per table
        for span in self._spans.values():
            self._used.setdefault(span.table, set()).update(range(span.address, span.address + span.count))
        self._refused_keys: dict[str, _Retry] = {}  # signals whose footprint the device refused
        self._refused_gaps: set[tuple[Any, int]] = set()  # unused addresses the device refused
        self._limits = {"registers": MAX_REGISTERS, "bits": MAX_BITS}
        self._plan = plan_for(machine)
        self._newly_refused: list[str] = []
        self._gateway_polls = 0
        self._seen_codes: set[tuple[str, int, int]] = set()

    @property
    def plan(self) -> list[ReadRequest]:
        return self._plan

    @property
    def bus(self) -> Bus:
        return self._bus

    async def __aenter__(self) -> Self:
        await self._bus.open(self.machine)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bus.release()

    async def read(self) -> list[Sample]:
        now = time.time()
        samples, back = await self._refused_samples(now)  # known before this poll's reads; probed when due
        self._newly_refused = []
        unreachable: str | None = None
        try:
            for req in list(self._plan):
                if unreachable is not None:
                    samples += [self._bad(key, now, unreachable) for key in req.keys]
                    continue
                try:
                    out, _ = await self._read_request(req, now)
                except _Unreachable as exc:
                    unreachable = str(exc)
                    out = [self._bad(key, now, unreachable) for key in req.keys]
                samples += out
        finally:
            if self._newly_refused:
                log.error(
                    "machine %s: the device refuses the address(es) of signal(s) %s (illegal data address): "
                    "they are bad, the others are read without them in %d request(s) per poll",
                    self.machine.id,
                    ", ".join(self._newly_refused),
                    len(self._plan),
                )
        if back:  # read with the others from the next poll on (this poll's plan did not have them)
            self._replan()
            log.info(
                "machine %s: the device answers the address(es) of signal(s) %s again; they are read again "
                "(%d request(s) per poll)",
                self.machine.id,
                ", ".join(back),
                len(self._plan),
            )
        if unreachable is None:
            self._gateway_polls = 0
        else:
            self._gateway_polls += 1
            if self._gateway_polls >= GATEWAY_POLLS:
                self._gateway_polls = 0
                raise ConnectionLost(
                    self.machine.id,
                    f"unit {self.machine.unit} unreachable, {GATEWAY_POLLS} polls in a row: {unreachable}",
                )
        return samples

    async def _refused_samples(self, now: float) -> tuple[list[Sample], list[str]]:
        """The refused signals' samples: bad, except those whose probe is due and now answered (their
        keys are returned too: the caller plans them back in)."""
        samples: list[Sample] = []
        back: list[str] = []
        mono = self._monotonic()
        for key in sorted(self._refused_keys):
            retry = self._refused_keys[key]
            if mono < retry.due:
                samples.append(self._bad(key, now, _exception_text(ILLEGAL_ADDRESS)))
                continue
            span = self._spans[key]
            req = ReadRequest(span.table, span.address, span.count, (key,))
            reply = await self._bus.request(self.machine, req.table, req.address, req.count)
            if reply.exception_code:
                if reply.exception_code == ILLEGAL_ADDRESS:  # still refused: wait longer next time
                    retry.wait = min(retry.wait * 2, max(REFUSED_RETRY_MAX, self.machine.refused_retry))
                    retry.due = mono + retry.wait
                samples.append(self._bad(key, now, _exception_text(reply.exception_code)))
                continue
            del self._refused_keys[key]
            back.append(key)
            samples += self._decode(req, reply.data, now)
        return samples, back

    async def _read_request(self, req: ReadRequest, now: float) -> tuple[list[Sample], bool]:
        """The request's samples, and whether the device answered every read without an exception."""
        reply = await self._bus.request(self.machine, req.table, req.address, req.count)
        if reply.exception_code in BUSY:
            await asyncio.sleep(busy_pause(self.machine))
            reply = await self._bus.request(self.machine, req.table, req.address, req.count)
        code = reply.exception_code
        if not code:
            return self._decode(req, reply.data, now), True
        if code == ILLEGAL_ADDRESS:
            return await self._bisect(req, now), False
        reason = _exception_text(code)
        if (req.table, req.address, code) not in self._seen_codes:
            self._seen_codes.add((req.table, req.address, code))
            log.warning("machine %s: %s answered %s; its signals are bad this poll", self.machine.id, req, reason)
        if code in GATEWAY:
            raise _Unreachable(reason)
        return [self._bad(key, now, reason) for key in req.keys], False

    async def _bisect(self, req: ReadRequest, now: float) -> list[Sample]:
        """Find the addresses the device refuses in ``req`` by reading halves of it."""
        halves = split_request(req, self._spans)
        if not halves:  # one footprint: its addresses are the refused ones
            wait = self.machine.refused_retry
            self._refused_keys.update({key: _Retry(self._monotonic() + wait, wait) for key in req.keys})
            self._newly_refused += req.keys
            self._replan()
            return [self._bad(key, now, _exception_text(ILLEGAL_ADDRESS)) for key in req.keys]
        out: list[Sample] = []
        clean = True
        for half in halves:
            samples, ok = await self._read_request(half, now)
            out += samples
            clean = clean and ok
        if clean:  # every part was answered: the culprit is outside the halves, or the length
            self._learn_from_clean_halves(req, halves)
        return out

    def _learn_from_clean_halves(self, req: ReadRequest, halves: list[ReadRequest]) -> None:
        covered = {a for h in halves for a in range(h.address, h.address + h.count)}
        used = self._used.get(req.table, set())
        gaps = {a for a in range(req.address, req.address + req.count) if a not in covered and a not in used}
        if gaps:
            log.info(
                "machine %s: the device refuses unused %s addresses %d..%d; reads no longer bridge them",
                self.machine.id,
                req.table,
                min(gaps),
                max(gaps),
            )
            self._refused_gaps |= {(req.table, a) for a in gaps}
            self._replan()
            return
        kind = "bits" if req.table in _BIT_TABLES else "registers"
        longest = max(h.count for h in halves)
        if longest < self._limits[kind]:  # the device takes no read this long
            self._limits[kind] = longest
            log.warning(
                "machine %s: the device refuses a read of %d %s but answers its halves; reads are now at most %d %s",
                self.machine.id,
                req.count,
                kind,
                longest,
                kind,
            )
            self._replan()

    def _replan(self) -> None:
        """Plan the signals not refused, never bridging an address the device refused.

        A refused signal is left out by its key, not by its addresses: only one of its addresses
        may be refused, and another signal overlapping it may read fine. Its addresses that no
        planned signal covers are not bridged.
        """
        kept = [span for key, span in self._spans.items() if key not in self._refused_keys]
        covered = {(span.table, a) for span in kept for a in range(span.address, span.address + span.count)}
        avoid = set(self._refused_gaps)
        for key in self._refused_keys:
            span = self._spans[key]
            avoid |= {(span.table, a) for a in range(span.address, span.address + span.count)} - covered
        self._layouts.clear()
        self._plan = plan_reads(
            kept,
            max_gap=self.machine.max_gap,
            refused=avoid,
            max_registers=self._limits["registers"],
            max_bits=self._limits["bits"],
        )

    def _decode(self, req: ReadRequest, data: bytes, now: float) -> list[Sample]:
        """The samples of one reply's data bytes (see :class:`~drivers.modbus.tcp.Reply`)."""
        if len(data) != data_size(req.table, req.count):
            what = f"{len(data)} bytes for {req.count} {'bits' if req.table in _BIT_TABLES else 'registers'}"
            return [self._bad(key, now, f"a reply of the wrong length ({what})") for key in req.keys]
        # The hot path: about 1,000 signals per poll must cost little CPU. A Sample is built with
        # tuple.__new__, as NamedTuple's own __new__ costs twice as much.
        mid, new, good = self.machine.id, tuple.__new__, Quality.GOOD
        out: list[Sample] = []
        value: Any
        if req.table in _BIT_TABLES:
            packed = int.from_bytes(data, "little")  # the first address is the least significant bit
            for key in req.keys:
                value = bool(packed >> (self._spans[key].address - req.address) & 1)
                out.append(new(Sample, (mid, key, value, good, now, None)))
            return out
        layout = self._layouts.get(req)
        if layout is None:
            layout = self._layouts[req] = self._layout(req)
        block, isfinite = Block(data), math.isfinite
        for key, decoder, at in layout:
            try:
                value = decoder(block, at)
            except CodecError as exc:  # not expected: the decoders were checked when compiled
                out.append(self._bad(key, now, str(exc)))
                continue
            if value.__class__ is float and not isfinite(value):
                out.append(self._bad(key, now, f"not a finite number ({value})"))
            else:
                out.append(new(Sample, (mid, key, value, good, now, None)))
        return out

    def _layout(self, req: ReadRequest) -> list[_Item]:
        """What decoding a register reply to ``req`` needs per signal, worked out once per request."""
        return [_Item(key, self._decoders[key], self._spans[key].address - req.address) for key in req.keys]

    def _bad(self, key: str, now: float, why: str) -> Sample:
        return Sample(self.machine.id, key, None, Quality.BAD, now, error=why)
