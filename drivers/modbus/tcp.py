"""A lean Modbus TCP client for the four read functions: the hot path of polling.

pymodbus's client costs 0.24-0.43 ms of CPU per read on the 2-core development VM (its transport,
transaction manager, framer, PDU objects and debug formatting); this client costs 0.11-0.15 ms
(``bench/modbus_client.py``). That is what keeps polling 1,000 signals a second under 1 % of a core
(``bench/modbus_poll.py``). It does only what the agent needs of plain Modbus TCP (the socket
framer): read coils (1), discrete inputs (2), holding registers (3) and input registers (4).
RTU, RTU-over-TCP and everything else stay with pymodbus (:mod:`drivers.modbus.bus`); the tests
run both against pymodbus servers.

Guarantees (the caller, :class:`drivers.modbus.bus.Bus`, sends one request at a time):

* A reply is taken only for the request in flight: same transaction id, unit and function code
  (or its exception code). A late reply to a request that timed out is dropped, so a timeout can
  never put replies out of step with requests. A device that answers with transaction id 0 (some
  do not echo it) is accepted when everything else matches; for such a device a late reply cannot
  be told from a current one.
* A reply that does not fit its request (wrong unit or function code, a byte count that does not
  match the bytes sent) fails that request with :class:`BadReply`. Whether the data has the length
  the request asked for is the caller's to judge (:func:`data_size`).
* A stream that is not Modbus TCP (protocol id not 0, an impossible length) fails the request with
  :class:`BadReply` and closes the connection, and so does giving up on a request (a timeout) with
  part of its reply received: the bytes that follow cannot be trusted to start a frame. The next
  request reconnects.
* :meth:`TcpReader.read` does not time out by itself; the caller bounds it (``asyncio.timeout``)
  and may cancel it at any point.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Final, NamedTuple

__all__ = ["FUNCTIONS", "BadReply", "Reply", "TcpReader", "data_size"]

FUNCTIONS: Final = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""The Modbus read function code of each table."""

_MBAP: Final = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit + PDU), unit
_REQUEST: Final = struct.Struct(">HHHBBHH")  # MBAP, function, address, count
_MAX_LENGTH: Final = 254  # unit + the largest PDU (253 bytes)


class Reply(NamedTuple):
    """A device's answer to one read.

    ``data`` holds the values as on the wire: registers big-endian, two bytes each; bits packed
    eight to a byte, the first address in the least significant bit. ``exception_code`` is the
    Modbus exception the device answered with (``data`` is then empty), or 0.
    """

    data: bytes
    exception_code: int = 0


class BadReply(Exception):
    """The device answered, but not with a valid reply to the request."""


class _Request(NamedTuple):
    tid: int
    unit: int
    function: int
    future: asyncio.Future[Reply]


def data_size(table: str, count: int) -> int:
    """The data bytes of a reply to a read of ``count`` registers or bits from ``table``."""
    return -(-count // 8) if FUNCTIONS[table] <= 2 else 2 * count


class TcpReader(asyncio.Protocol):
    """One Modbus TCP connection for reads. :meth:`connect`, then :meth:`read` one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: _Request | None = None
        self._tid = 0

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> None:
        """Open the connection. Raises OSError when it cannot be opened."""
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def read(self, table: str, address: int, count: int, unit: int) -> Reply:
        """Read ``count`` registers or bits of ``table`` from ``address`` of ``unit``.

        Raises :class:`BadReply` for an answer that does not fit, ``ConnectionError`` when the
        connection is (or gets) closed.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("not connected")
        function = FUNCTIONS[table]
        self._tid = self._tid % 0xFFFF + 1  # 1..65535: 0 is what devices that do not echo ids send
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting = _Request(self._tid, unit, function, future)
        transport.write(_REQUEST.pack(self._tid, 0, 6, unit, function, address, count))
        try:
            return await future
        except asyncio.CancelledError:
            if self._buffer:  # given up on halfway through a reply
                self._out_of_step("a reply was cut off")
            raise
        finally:
            self._waiting = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer.clear()
        self._fail(ConnectionResetError(f"connection closed{f': {exc}' if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 7:
            tid, protocol, length, unit = _MBAP.unpack_from(buffer)
            if protocol or not 2 <= length <= _MAX_LENGTH:
                self._out_of_step(f"not a Modbus TCP frame (protocol id {protocol}, length {length})")
                return
            end = 6 + length
            if len(buffer) < end:
                return
            pdu = bytes(buffer[7:end])
            del buffer[:end]
            self._take(tid, unit, pdu)

    # -- internals ----------------------------------------------------------------------------

    def _take(self, tid: int, unit: int, pdu: bytes) -> None:
        request = self._waiting
        if request is None or request.future.done() or tid not in (request.tid, 0):
            return  # a late reply to a request given up on, or not meant for us
        function = pdu[0]
        if unit != request.unit:
            self._fail(BadReply(f"reply from unit {unit} to a request for unit {request.unit}"))
        elif function == request.function | 0x80 and len(pdu) == 2:
            request.future.set_result(Reply(b"", pdu[1]))
        elif function != request.function:
            self._fail(BadReply(f"reply with function code {function} to a request with {request.function}"))
        elif len(pdu) < 2 or pdu[1] != len(pdu) - 2:
            said = pdu[1] if len(pdu) > 1 else None
            self._fail(BadReply(f"reply says {said} data bytes and has {max(0, len(pdu) - 2)}"))
        else:
            request.future.set_result(Reply(pdu[2:]))

    def _fail(self, exc: Exception) -> None:
        request = self._waiting
        if request is not None and not request.future.done():
            request.future.set_exception(exc)

    def _out_of_step(self, why: str) -> None:
        """The byte stream cannot be trusted to start a frame: fail the request and hang up."""
        self._buffer.clear()
        self._fail(BadReply(why))
        self.close()
