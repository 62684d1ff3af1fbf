"""The one list of protocols, and the per-agent driver factory that uses it.

Adding a protocol: write ``drivers/<name>/`` with its ``config.py`` (the machine model) and its
``plugin.py`` (a :class:`~drivers.base.ProtocolPlugin`), and add the plugin to :data:`PROTOCOLS`.
Nothing else central changes: the config schema, ``check`` and the runtime all read this list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.config.base import MachineBase
from agent.errors import NotInstalled
from drivers.base import Driver, MachineDrivers, ProtocolPlugin
from drivers.modbus.plugin import PLUGIN as MODBUS
from drivers.opcua.plugin import PLUGIN as OPCUA

PROTOCOLS: tuple[ProtocolPlugin[Any], ...] = (MODBUS, OPCUA)


def plugin_for(protocol: str) -> ProtocolPlugin[Any]:
    """The plugin of a configured machine's ``protocol`` (the config only holds registered ones)."""
    return next(p for p in PROTOCOLS if p.name == protocol)


def not_installed(machines: Sequence[MachineBase]) -> list[tuple[str, str]]:
    """(key path, problem) for each machine whose protocol needs software that is not installed here
    (the OPC UA stack is an optional extra); loads the protocol stacks that are."""
    found = ((f"machines[{i}].protocol", plugin_for(m.protocol).missing(m)) for i, m in enumerate(machines))
    return [(key, problem) for key, problem in found if problem is not None]


def require_installed(machines: Sequence[MachineBase]) -> None:
    """Raise :class:`~agent.errors.NotInstalled` for the first machine whose protocol's software is not
    installed here. ``run`` calls it before anything starts, and on a reload before anything changes."""
    for key, problem in not_installed(machines):
        raise NotInstalled(f"{key}: {problem}")


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
