"""Modbus connections ("buses") and the per-agent registry that lets machines share them.

A :class:`Bus` is one connection (a :class:`Reader`): a serial port (Modbus RTU), or one TCP
connection to ``host:port`` with a framer (``socket`` for Modbus TCP, ``rtu`` for RTU-over-TCP
gateways). Plain Modbus TCP uses the lean :class:`~drivers.modbus.tcp.TcpReader` (about half of
pymodbus's CPU per read, see its docstring); serial RTU and RTU-over-TCP use pymodbus's client
(:class:`~drivers.modbus.rtu.PymodbusReader`). Every machine whose
:attr:`~drivers.modbus.config.ModbusMachine.bus` is the same (several units on one RS-485 line, or behind
one gateway) uses the same :class:`Bus`, made by one :class:`Buses` registry per agent run: there
is no module-level state.

Guarantees of :class:`Bus`:

* Requests go one at a time, in arrival order (one FIFO lock). After a request for machine ``m``
  the bus stays quiet for ``m.request_gap`` before the next request of any machine; on a serial
  line it always keeps at least the RTU inter-frame silence (3.5 characters, 1.75 ms at most).
* Each request is bounded by the asking machine's ``timeout``. A unit that does not answer in
  time, or answers with a reply that is not valid, raises :class:`NoAnswer` (a
  :class:`~agent.errors.ConnectionLost` for that machine only):
  the connection stays open for the other units. Only after :data:`RESET_AFTER` requests in a row
  without any answer, from whatever units, is the connection closed, to be reopened by the next
  request (a half-open TCP connection, a stuck USB adapter). pymodbus's own retries, its own
  connection closing after repeated timeouts and its automatic reconnect are all turned off.
* A connection that broke (closed by the peer, a serial error) is reopened by the next request,
  transparently; when it cannot be reopened, that request raises
  :class:`~agent.errors.ConnectionLost`. So after any disconnect the connection comes back as soon
  as the device does, without a restart.
* :meth:`Bus.open` / :meth:`Bus.release` count the drivers using the bus; the connection is
  closed when the last one leaves, and by :meth:`Buses.aclose`.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Final, Protocol

from agent.errors import ConnectionLost
from drivers.modbus.config import ModbusMachine
from drivers.modbus.tcp import BadReply, Reply, TcpReader

__all__ = ["RESET_AFTER", "Bus", "Buses", "NoAnswer", "Reader"]

RESET_AFTER: Final = 3
"""Requests in a row without any answer after which the bus reopens its connection."""


class Reader(Protocol):
    """One connection that reads (:class:`~drivers.modbus.tcp.TcpReader` is one).

    The caller guarantees one :meth:`read` at a time, only while :attr:`connected`; it bounds
    each call with its own timeout and may cancel it."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the connection; OSError when it cannot be opened."""

    async def read(self, table: str, address: int, count: int, unit: int) -> Reply:
        """The reply (an exception reply included); :class:`~drivers.modbus.tcp.BadReply` for an
        answer that does not fit, OSError when the connection is lost."""

    def close(self) -> None: ...


class NoAnswer(ConnectionLost):
    """The unit did not answer a request in time (or answered garbage); the bus itself is fine."""


def rtu_silence(baudrate: int) -> float:
    """The RTU inter-frame silence: 3.5 characters of 11 bits, fixed at 1.75 ms above 19200 baud."""
    return 0.00175 if baudrate > 19200 else 3.5 * 11 / baudrate


def port_problem(path: str) -> str | None:
    """Why the serial port cannot be opened, in words, or None if it can (or is a pyserial URL)."""
    if "://" in path:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"serial port {path} does not exist: is the adapter plugged in? (ls /dev/serial/by-id/)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (
                f"no permission to open serial port {path}: add the agent's user to the dialout group "
                "(sudo usermod -aG dialout <user>, then log in again or restart the service)"
            )
        if exc.errno == errno.EBUSY:
            return f"serial port {path} is busy: another program has it open"
        return f"cannot open serial port {path}: {exc.strerror or exc}"
    os.close(fd)
    return None


class Bus:
    """One shared Modbus connection. See the module docstring for what it guarantees."""

    def __init__(self, machine: ModbusMachine) -> None:
        self.name = machine.bus
        self._lock = asyncio.Lock()
        self._client: Reader | None = None
        self._users = 0
        self._quiet_until = 0.0
        self._silent = 0  # requests in a row without an answer
        self._use_settings(machine)
        self.connects = 0  # connections opened (for tests and metrics)
        self.requests = 0  # requests sent

    def _use_settings(self, machine: ModbusMachine) -> None:
        """Connect with ``machine``'s settings from now on (machines on one bus agree on them)."""
        self._settings = machine
        self._min_gap = rtu_silence(machine.baudrate) if machine.serial is not None else 0.0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _new_reader(self) -> Reader:
        m = self._settings
        if m.serial is None and m.framer == "socket":
            assert m.host is not None
            return TcpReader(m.host, m.port)
        from drivers.modbus.rtu import PymodbusReader  # pymodbus is imported only when RTU is used

        return PymodbusReader(m)

    async def _connected(self, machine: ModbusMachine) -> Reader:
        """The open connection, (re)connecting first if needed. Call with the lock held."""
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = self._new_reader()
        try:
            async with asyncio.timeout(machine.timeout):
                await client.connect()
        except (TimeoutError, OSError) as exc:
            client.close()
            raise ConnectionLost(machine.id, f"cannot connect to {self.name}: {exc or type(exc).__name__}") from exc
        self._client = client
        self._silent = 0
        self.connects += 1
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def open(self, machine: ModbusMachine) -> None:
        """Join the bus, connecting it if needed. Raises ConnectionLost (and does not join) on failure.

        The first to join an unused (closed) bus brings the connection settings: a reloaded
        config with another baud rate takes effect once the old sessions have left."""
        if self._users == 0:
            self._use_settings(machine)
        self._users += 1
        try:
            async with self._lock:
                await self._connected(machine)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Leave the bus; the last one to leave closes the connection."""
        self._users -= 1
        if self._users <= 0:
            self._users = 0
            self._drop()

    async def request(self, machine: ModbusMachine, table: str, address: int, count: int) -> Reply:
        """One read for ``machine``'s unit: the device's reply (an exception reply included).

        Raises :class:`NoAnswer` when the unit does not answer within ``machine.timeout``, and
        :class:`~agent.errors.ConnectionLost` when the connection is down and cannot be reopened.
        """
        loop = asyncio.get_running_loop()
        async with self._lock:
            client = await self._connected(machine)
            pause = self._quiet_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self.requests += 1
            try:
                async with asyncio.timeout(machine.timeout):
                    reply = await client.read(table, address, count, machine.unit)
            except (TimeoutError, BadReply) as exc:
                self._silent += 1
                if self._silent >= RESET_AFTER:  # nobody answers: reopen the connection next time
                    self._drop()
                where = f"{table} {address}..{address + count - 1}"
                what = (
                    f"no answer to {where} within {machine.timeout:g}s"
                    if isinstance(exc, TimeoutError)
                    else f"no valid answer to {where}: {exc}"
                )
                raise NoAnswer(machine.id, f"unit {machine.unit} on {self.name}: {what}") from exc
            except OSError as exc:
                self._drop()
                where = f"{table} {address}..{address + count - 1}"
                raise ConnectionLost(
                    machine.id, f"{self.name}: connection lost reading {where}: {exc or type(exc).__name__}"
                ) from exc
            finally:
                self._quiet_until = loop.time() + max(machine.request_gap, self._min_gap)
            self._silent = 0
            return reply

    def close(self) -> None:
        self._drop()


class Buses:
    """The buses of one agent run, by :attr:`~drivers.modbus.config.ModbusMachine.bus`. Close with :meth:`aclose`."""

    def __init__(self) -> None:
        self._buses: dict[str, Bus] = {}

    def get(self, machine: ModbusMachine) -> Bus:
        bus = self._buses.get(machine.bus)
        if bus is None:
            bus = self._buses[machine.bus] = Bus(machine)
        return bus

    def __len__(self) -> int:
        return len(self._buses)

    async def aclose(self) -> None:
        for bus in self._buses.values():
            bus.close()
        self._buses.clear()
