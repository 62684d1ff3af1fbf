"""The one small interface every protocol driver implements, and the factory that picks one.

``agent/`` uses drivers only through :class:`Driver` and :func:`make_driver`; it never imports a
protocol library. Protocol modules are imported only when a machine of that protocol is configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from agent.config.base import MachineBase
from agent.model import Sample
from drivers.modbus.config import ModbusMachine
from drivers.opcua.config import OpcuaMachine


class Driver(Protocol):
    """One connection to one machine.

    Caller guarantees: ``read`` is called only inside ``async with`` and never concurrently.
    ``__aenter__`` connects or raises :class:`~agent.errors.ConnectionLost`. ``read`` returns one
    sample per configured signal it could plan a read for (a device error gives bad-quality samples,
    not an exception) or raises :class:`~agent.errors.ConnectionLost` when the connection is no
    longer usable; the caller then leaves the context and reconnects with backoff. Every call is
    bounded in time by the machine's ``timeout``.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def read(self) -> list[Sample]: ...


@runtime_checkable
class PushDriver(Driver, Protocol):
    """A driver whose source pushes changes (e.g. OPC UA subscriptions).

    ``updates()`` yields lists of samples as they arrive (the first list holds every signal's
    current value) and raises :class:`~agent.errors.ConnectionLost` when the session is gone. The
    runtime iterates it instead of calling ``read`` on a timer.
    """

    def updates(self) -> AsyncIterator[list[Sample]]: ...


CrossCheck = Callable[[Sequence[tuple[int, MachineBase]]], list[tuple[str, str]]]


def no_cross_check(machines: Sequence[tuple[int, MachineBase]]) -> list[tuple[str, str]]:
    """For a protocol whose machines need no check against each other."""
    return []


@dataclass(frozen=True)
class ProtocolPlugin:
    """What the agent knows of one protocol; :mod:`drivers.registry` lists them all.

    ``name`` is the value of ``protocol`` in the config; ``config`` the machine model (a
    :class:`~agent.config.base.MachineBase` with ``protocol: Literal[name]``). ``cross_check`` gets
    every machine of this protocol with its index in ``machines`` and returns (key path, problem)
    pairs for what no single machine's model can check (machines sharing a connection must agree).
    """

    name: str
    config: type[MachineBase]
    cross_check: CrossCheck = no_cross_check


def make_driver(machine: MachineBase) -> Driver:
    """A new, unconnected driver for the machine."""
    if isinstance(machine, ModbusMachine):
        from drivers.modbus.driver import ModbusDriver

        return ModbusDriver(machine)
    from drivers.opcua import OpcuaDriver

    assert isinstance(machine, OpcuaMachine)
    return OpcuaDriver(machine)


class Drivers:
    """Makes the drivers of one agent, and owns what they share. One instance per agent run: no
    global state. Call :meth:`aclose` when done.

    Modbus machines with the same :attr:`~drivers.modbus.config.ModbusMachine.bus` (one serial port, or one
    ``host:port`` and framer) share one connection, a :class:`drivers.modbus.bus.Bus`: requests on
    it go one at a time, and a unit that does not answer does not close it for the others. A read
    on a shared bus may also wait for the requests of the other units ahead of it (each bounded by
    its machine's ``timeout``). pymodbus is imported only when a Modbus machine is made.
    """

    def __init__(self) -> None:
        self._modbus: Any = None  # drivers.modbus.bus.Buses, made on first use

    def __call__(self, machine: MachineBase) -> Driver:
        if isinstance(machine, ModbusMachine):
            from drivers.modbus.bus import Buses
            from drivers.modbus.driver import ModbusDriver

            if self._modbus is None:
                self._modbus = Buses()
            return ModbusDriver(machine, self._modbus.get(machine))
        return make_driver(machine)

    async def aclose(self) -> None:
        """Close whatever the drivers shared."""
        if self._modbus is not None:
            await self._modbus.aclose()
            self._modbus = None
