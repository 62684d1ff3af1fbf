"""The one small interface every protocol driver implements, and the factory that picks one.

``agent/`` uses drivers only through :class:`Driver` and :func:`make_driver`; it never imports a
protocol library. Protocol modules are imported only when a machine of that protocol is configured.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from agent.config import ModbusMachine, OpcuaMachine
from agent.model import Sample


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


def make_driver(machine: ModbusMachine | OpcuaMachine) -> Driver:
    """A new, unconnected driver for the machine."""
    if isinstance(machine, ModbusMachine):
        from drivers.modbus.driver import ModbusDriver

        return ModbusDriver(machine)
    from drivers.opcua import OpcuaDriver

    return OpcuaDriver(machine)
