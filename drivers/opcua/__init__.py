"""OPC UA: subscription (default) and poll drivers on asyncua, and the ``check --connect`` probe.

``from drivers.opcua import OpcuaDriver`` imports asyncua (heavy); the OPC UA plugin
(:mod:`drivers.opcua.plugin`) does so only when an OPC UA driver or probe is made, or when
:func:`missing_stack` is asked. Importing the package itself, its plugin, its config or the pure
:mod:`drivers.opcua.values` does not.

The OPC UA stack (asyncua, cryptography, cffi) is optional: it is the ``opcua`` extra
(``pip install 'andon-agent[opcua]'``), because a Modbus-only gateway does not need it and cffi has no
wheel for 32-bit ARM on PyPI. :func:`missing_stack` is the one place that says so when it is missing.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.opcua.driver import OpcuaDriver, OpcuaSubscriptionDriver
    from drivers.opcua.values import to_value

__all__ = ["OpcuaDriver", "OpcuaSubscriptionDriver", "missing_stack", "to_value"]

# What to run when the stack is missing: the installer (which knows 32-bit ARM, where pip has to build
# cffi), or pip into the environment this agent runs from.
HOW_TO_INSTALL = (
    "run `sudo ./systemd/install.sh --opcua` from the source, or `{python} -m pip install 'andon-agent[opcua]'` "
    '(on 32-bit ARM pip then needs a C compiler for cffi: README, "OPC UA on 32-bit ARM")'
)


def missing_stack(machine: str | None) -> str | None:
    """Load the OPC UA stack now; None if it loaded, else one line naming the ``machine`` (None: no
    machine, as for ``discover``), what failed to import and exactly what to install.

    Guarantee: after it returns None, ``drivers.opcua.driver`` (asyncua, cryptography and its native
    parts) is imported. An import error inside the agent's own code is not taken for a missing stack:
    it propagates as it is.
    """
    try:
        importlib.import_module("drivers.opcua.driver")
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] in ("agent", "drivers"):
            raise
        how = HOW_TO_INSTALL.format(python=sys.executable)
        who = "the OPC UA stack is" if machine is None else f"machine {machine!r} needs the OPC UA stack, which is"
        return f"{who} not installed here ({exc}): {how}"
    return None


def __getattr__(name: str) -> Any:
    if name in ("OpcuaDriver", "OpcuaSubscriptionDriver"):
        from drivers.opcua import driver

        return getattr(driver, name)
    if name == "to_value":
        from drivers.opcua.values import to_value

        return to_value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
