"""The config's shared vocabulary: what every part of the schema, and every driver, may use.

The strict base model (unknown keys are errors, models are frozen), durations, sizes, ids and
severity names, :class:`KeyProblem` (a cross-field error that belongs to one key), and the base of
every machine and signal model: :class:`MachineBase` and :class:`SignalBase`. A protocol's own
models (``drivers/<protocol>/config.py``) extend these two; the rules' cross-checks ask a signal
only :attr:`SignalBase.value_kind`, never its protocol.

This module imports nothing of ``agent/`` but pydantic, so drivers can use it (the layering test
holds them to that).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DEFAULT_STATE_DIR = Path("/var/lib/andon-agent")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"250ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"1d"`` or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f'not a duration: {value!r} (use e.g. "250ms", "2s", "5m" or seconds)')
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "kB": 1000, "KB": 1000, "KiB": 1024}
_SIZE_UNITS |= {"MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_size(value: object) -> object:
    """``"64MiB"``, ``"500MB"``, ``"10kB"`` -> bytes; anything else is left to the int validator."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f'not a size: {value!r} (use e.g. "64MiB", "500MB" or a number of bytes)')
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
SeverityName = Literal["info", "warning", "critical"]
ValueKind = Literal["number", "bool", "text", "unknown"]


class KeyProblem(ValueError):
    """A cross-field check's error that belongs to one key: the error's key path ends in ``key``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def read_secret(name: str, env: str | None, file: Path | None, *, strip: str | None = None) -> str | None:
    """A secret named by the config, never held in it: from the environment variable ``env`` (the
    value of ``<name>_env``) or the file ``file`` (``<name>_file``), or None when neither is set.

    ``strip``: the characters taken off both ends (default: whitespace). Raises :class:`KeyProblem`
    naming ``<name>_env`` or ``<name>_file`` when the variable is unset or empty, or the file cannot
    be read or is empty; its text never holds the secret. Callers add where the key is
    (``sinks[2].token_env``, a machine's id) and turn it into their own error.
    """
    if env:
        value = os.environ.get(env, "").strip(strip)
        if not value:
            raise KeyProblem(f"{name}_env", f"environment variable {env} is not set or empty")
        return value
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip(strip)
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise KeyProblem(f"{name}_file", f"cannot read {file}: {why}") from None
        if not value:
            raise KeyProblem(f"{name}_file", f"{file} is empty")
        return value
    return None


class StrictModel(BaseModel):
    """Every config model: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SignalBase(StrictModel):
    """What every protocol's signal has: an id and an engineering unit (for messages)."""

    id: Id
    unit: str = ""  # engineering unit, for messages ("%", "strokes")

    @property
    def value_kind(self) -> ValueKind:
        """What kind of value the signal holds, as far as the config tells ("unknown": only the device knows)."""
        return "unknown"

    @property
    def type_name(self) -> str:
        """The signal's configured type in the config's own words, for error messages."""
        return self.value_kind


class MachineBase(StrictModel):
    """What every protocol's machine has. A protocol's model adds ``protocol: Literal["<name>"]``,
    its connection keys and ``signals: list[<its signal model>]``."""

    id: Id
    protocol: str
    poll_interval: Duration = Field(default=1.0, gt=0)
    offline_after: Duration = Field(default=10.0, gt=0)
    timeout: Duration = Field(default=1.0, gt=0)  # one request; bounded so a dead machine is noticed fast
    reconnect_max: Duration = Field(default=30.0, gt=0)  # cap of the reconnect backoff
    offline_severity: SeverityName = "warning"  # severity of the "<machine>/offline" alert
    signals: Sequence[SignalBase] = Field(min_length=1)
    # Whether the protocol reports the machine's own alarms (an `alarms` rule needs it): OPC UA does.
    has_alarms: ClassVar[bool] = False

    def use_state_dir(self, state_dir: Path) -> None:
        """Called once after loading with ``[agent] state_dir``, for a machine that keeps files there."""
