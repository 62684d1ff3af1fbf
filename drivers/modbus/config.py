"""The Modbus machine and signal models (``protocol = "modbus"``), and the check that machines
sharing a serial port agree on its settings.

Pure pydantic: importing this module imports no protocol library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from agent.config.base import Duration, KeyProblem, MachineBase, SignalBase, ValueKind

RegisterTable = Literal["holding", "input", "coil", "discrete"]
SignalType = Literal[
    "bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]


class ModbusSignal(SignalBase):
    table: RegisterTable = Field(default="holding", alias="register")
    address: int = Field(ge=0, le=65535)
    type: SignalType = "uint16"
    byte_order: ByteOrder = "ABCD"
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=125)  # registers, for type = "string"
    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> ModbusSignal:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise KeyProblem("type", f'a {self.table} signal must have type = "bool", not {self.type!r}')
        if self.type == "bit":
            if self.bit is None:
                raise KeyProblem("bit", 'type = "bit" needs `bit` (0 = least significant bit of the register)')
        elif self.bit is not None:
            raise KeyProblem("bit", '`bit` is only for type = "bit"')
        if self.type == "string" and self.length is None:
            raise KeyProblem("length", 'type = "string" needs `length` (in registers)')
        if self.type != "string" and self.length is not None:
            raise KeyProblem("length", '`length` is only for type = "string"')
        for name in ("scale", "offset"):
            if not math.isfinite(getattr(self, name)):
                raise KeyProblem(name, f"`{name}` must be a finite number")
        return self

    @property
    def value_kind(self) -> ValueKind:
        if self.type in ("bool", "bit"):
            return "bool"
        return "text" if self.type == "string" else "number"

    @property
    def type_name(self) -> str:
        return self.type


class ModbusMachine(MachineBase):
    protocol: Literal["modbus"]
    host: str | None = None  # Modbus TCP
    port: int = Field(default=502, ge=1, le=65535)
    serial: str | None = None  # Modbus RTU: "/dev/ttyUSB0"
    baudrate: int = Field(default=19200, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    framer: Literal["socket", "rtu"] = "socket"  # TCP only: "rtu" for RTU-over-TCP gateways
    unit: int = Field(default=1, ge=0, le=255)
    max_gap: int = Field(default=8, ge=0, le=124)  # registers bridged to merge two reads into one
    request_gap: Duration = Field(default=0.0, ge=0, le=10)  # quiet time on the bus after each request
    # A signal whose address the device refused is read alone again after this, then at doubling
    # intervals up to an hour (a PLC program change may add the register); see drivers.modbus.driver.
    refused_retry: Duration = Field(default=300.0, gt=0)
    signals: list[ModbusSignal] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ModbusMachine:
        if self.host is not None and self.serial is not None:
            raise KeyProblem("serial", "set only one of `host` (Modbus TCP) or `serial` (Modbus RTU), not both")
        if self.host is None and self.serial is None:
            raise ValueError("set one of `host` (Modbus TCP) or `serial` (Modbus RTU)")
        if self.serial is not None:
            for key in ("framer", "port"):
                if key in self.model_fields_set:
                    raise KeyProblem(key, f"`{key}` is only for Modbus TCP (`host`); a serial line always uses RTU")
        return self

    @property
    def bus(self) -> str:
        """The connection this machine uses; machines with the same ``bus`` share one connection."""
        if self.serial is not None:
            return f"serial {self.serial}"
        return f"tcp {(self.host or '').lower()}:{self.port}" + (" rtu" if self.framer == "rtu" else "")


_SERIAL_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")


def check_buses(machines: Sequence[tuple[int, MachineBase]]) -> list[tuple[str, str]]:
    """Modbus machines on one serial port share one connection: they must agree on its settings.

    ``machines`` are (index in ``machines``, machine); the result is (key path, problem) pairs.
    """
    errors: list[tuple[str, str]] = []
    first: dict[str, ModbusMachine] = {}
    for mi, m in machines:
        if not isinstance(m, ModbusMachine) or m.serial is None:
            continue
        other = first.setdefault(m.bus, m)
        if other is m:
            continue
        for key in _SERIAL_SETTINGS:
            mine, theirs = getattr(m, key), getattr(other, key)
            if mine != theirs:
                errors.append(
                    (
                        f"machines[{mi}].{key}",
                        f"machine {m.id!r} shares serial port {m.serial} with {other.id!r}, "
                        f"which has {key} = {theirs!r}, not {mine!r}; machines on one bus must agree",
                    )
                )
    return errors
