"""The Modbus protocol as the agent sees it: its config model and the check of shared serial ports."""

from __future__ import annotations

from drivers.base import ProtocolPlugin
from drivers.modbus.config import ModbusMachine, check_buses

PLUGIN = ProtocolPlugin(name="modbus", config=ModbusMachine, cross_check=check_buses)
