"""The OPC UA protocol as the agent sees it: its config model. Imports no asyncua."""

from __future__ import annotations

from drivers.base import ProtocolPlugin
from drivers.opcua.config import OpcuaMachine

PLUGIN = ProtocolPlugin(name="opcua", config=OpcuaMachine)
