"""The one list of protocols, and the per-agent driver factory that uses it.

Adding a protocol: write ``drivers/<name>/`` with its ``config.py`` (the machine model) and its
``plugin.py`` (a :class:`~drivers.base.ProtocolPlugin`), and add the plugin to :data:`PROTOCOLS`.
Nothing else central changes: the config schema, ``check`` and the runtime all read this list.
"""

from __future__ import annotations

from typing import Any

from agent.config.base import MachineBase
from drivers.base import Driver, MachineDrivers, ProtocolPlugin
from drivers.modbus.plugin import PLUGIN as MODBUS
from drivers.opcua.plugin import PLUGIN as OPCUA

PROTOCOLS: tuple[ProtocolPlugin[Any], ...] = (MODBUS, OPCUA)


def plugin_for(protocol: str) -> ProtocolPlugin[Any]:
    """The plugin of a configured machine's ``protocol`` (the config only holds registered ones)."""
    return next(p for p in PROTOCOLS if p.name == protocol)


class Drivers:
    """Makes the drivers of one agent, and owns what they share. One instance per agent run: no
    global state. Call :meth:`aclose` when done.

    Each protocol's :class:`~drivers.base.MachineDrivers` is made on first use (so a protocol no
    machine uses costs nothing) and shares what its machines share (Modbus buses).
    """

    def __init__(self) -> None:
        self._made: dict[str, MachineDrivers[Any]] = {}

    def __call__(self, machine: MachineBase) -> Driver:
        made = self._made.get(machine.protocol)
        if made is None:
            made = self._made[machine.protocol] = plugin_for(machine.protocol).drivers()
        return made(machine)

    async def aclose(self) -> None:
        """Close whatever the drivers shared."""
        made, self._made = self._made, {}
        for drivers in made.values():
            await drivers.aclose()


def make_driver(machine: MachineBase) -> Driver:
    """A new, unconnected driver for the machine, sharing nothing (its connection closes when it leaves)."""
    return plugin_for(machine.protocol).drivers()(machine)
