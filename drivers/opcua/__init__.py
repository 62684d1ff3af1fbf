"""OPC UA: subscription (default) and poll drivers on asyncua, and the ``check --connect`` probe.

``from drivers.opcua import OpcuaDriver`` imports asyncua (heavy); the OPC UA plugin
(:mod:`drivers.opcua.plugin`) does so only when an OPC UA driver or probe is made. Importing the
package itself, its plugin, its config or the pure :mod:`drivers.opcua.values` does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.opcua.driver import OpcuaDriver, OpcuaSubscriptionDriver
    from drivers.opcua.values import to_value

__all__ = ["OpcuaDriver", "OpcuaSubscriptionDriver", "to_value"]


def __getattr__(name: str) -> Any:
    if name in ("OpcuaDriver", "OpcuaSubscriptionDriver"):
        from drivers.opcua import driver

        return getattr(driver, name)
    if name == "to_value":
        from drivers.opcua.values import to_value

        return to_value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
