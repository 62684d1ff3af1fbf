"""Pure parts of the OPC UA driver: OPC UA values and status codes -> samples. No asyncua import."""

from __future__ import annotations

import enum
import math
from typing import Any

from agent.model import Quality, Sample, Value

# Status codes whose name alone does not tell an installer what to do.
HINTS = {
    "BadNodeIdUnknown": "the server has no such node: check `node` (namespace index and identifier)",
    "BadNodeIdInvalid": "not a valid node id: check `node`",
    "BadAttributeIdInvalid": "the node is not a variable: `node` must name a variable, not an object",
    "BadUserAccessDenied": "the user may not read this node",
    "BadNotReadable": "the node cannot be read",
}


def to_value(value: Any) -> tuple[Value | None, str | None]:
    """A value the rules can use, or ``(None, why)``.

    Boolean, the integer types (SByte .. UInt64), Float, Double, String and enumerations (an
    ``IntEnum`` or the enumeration's integer) are supported; NaN and infinities are not usable.
    """
    if isinstance(value, bool):
        return value, None
    if isinstance(value, enum.Enum):  # an enumeration asyncua knows the type of
        return (int(value.value), None) if isinstance(value.value, int) else (None, "enumeration without a number")
    if isinstance(value, int):
        return int(value), None
    if isinstance(value, float):
        return (value, None) if math.isfinite(value) else (None, f"not a finite number ({value})")
    if isinstance(value, str):
        return value, None
    if value is None:
        return None, "no value (null)"
    return None, f"unsupported value type {type(value).__name__}"


def sample(machine: str, signal: str, status: str | None, value: Any, now: float) -> Sample:
    """One sample from a status name (``None`` or ``"Good"`` for good) and a raw value."""
    if status is not None and status != "Good":
        return Sample(machine, signal, None, Quality.BAD, now, error=status)
    v, why = to_value(value)
    if why is not None:
        return Sample(machine, signal, None, Quality.BAD, now, error=why)
    return Sample(machine, signal, v, Quality.GOOD, now)


def describe(status: str) -> str:
    """``status`` with a hint for the installer where there is one."""
    hint = HINTS.get(status)
    return f"{status} ({hint})" if hint else status
