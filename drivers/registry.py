"""The one list of protocols. Adding a protocol: write ``drivers/<name>/`` with its ``plugin.py``
and add its ``PLUGIN`` here; nothing else central changes (the config schema is built from this list).
"""

from __future__ import annotations

from drivers.base import ProtocolPlugin
from drivers.modbus.plugin import PLUGIN as MODBUS
from drivers.opcua.plugin import PLUGIN as OPCUA

PROTOCOLS: tuple[ProtocolPlugin, ...] = (MODBUS, OPCUA)
