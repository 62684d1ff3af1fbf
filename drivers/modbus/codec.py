"""Modbus register codec: registers <-> values, pure and without pymodbus.

A value of ``n`` registers is ``2 * n`` bytes. The byte order is named the way device manuals and
the config name it, by where the bytes ``A B C D`` of the big-endian value end up on the wire::

    float32 3.14 = 0x4048F5C3, bytes A=40 B=48 C=F5 D=C3

    ABCD  [0x4048, 0xF5C3]   big-endian bytes, big-endian words (the Modbus default)
    CDAB  [0xF5C3, 0x4048]   words reversed, bytes inside each word big-endian ("word swap")
    BADC  [0x4840, 0xC3F5]   bytes swapped inside each word, word order big ("byte swap")
    DCBA  [0xC3F5, 0x4840]   fully little-endian: every byte reversed

The same rule applies to every width: CDAB on a 64-bit value lists its four words last first,
DCBA is ``struct.pack("<q")`` read as big-endian registers. On one-register types (``bool``,
``bit``, ``int16``, ``uint16``) CDAB is the same as ABCD, and BADC/DCBA swap the register's two
bytes. Strings take the same transformation over the whole register list (CDAB/DCBA reverse the
list of registers, BADC/DCBA swap the bytes inside each register).

Guarantees:

* :func:`decode` and :func:`encode` are exact inverses: for every type except ``bit``,
  ``decode(encode(v, t, o), t, o) == v`` for any ``v`` that ``encode`` accepts, with three
  documented exceptions: a ``float32`` is rounded to the nearest float32 (``3.14`` comes back as
  ``3.140000104904175``), NaN comes back as *a* NaN, and a string loses its trailing NULs and
  spaces. ``encode(decode(r, t, o), t, o) == r`` holds for every valid register list of the integer
  types (``int16`` .. ``uint64``), and of the float types when it holds no NaN.
* For arguments of the declared types, every problem (wrong register count, a register outside
  0..65535, a value out of range, an unknown type or byte order) raises :class:`CodecError`, a
  :class:`ValueError`, with a message that names the type and what was wrong. Nothing else is
  raised.
* NaN and infinite floats are *returned* by :func:`decode`, not rejected: the codec cannot know
  whether a NaN is a sensor fault or a device's "no value" marker, so the driver decides (it marks
  the sample bad).
* No state, no I/O: every function depends only on its arguments.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Final, Literal, get_args

from agent.model import Value
from drivers.modbus.config import ByteOrder, SignalType

__all__ = ["Block", "CodecError", "Decoder", "compile_decoder", "decode", "encode", "register_count", "scaled"]


class CodecError(ValueError):
    """Registers that cannot be decoded, or a value that cannot be encoded, as the given type."""


_TYPES: Final = frozenset(get_args(SignalType))
_ORDERS: Final = frozenset(get_args(ByteOrder))

# struct format (big-endian) and size in registers of the fixed-width numeric types.
_NUMERIC: Final = MappingProxyType(
    {
        "int16": ("h", 1),
        "uint16": ("H", 1),
        "int32": ("i", 2),
        "uint32": ("I", 2),
        "int64": ("q", 4),
        "uint64": ("Q", 4),
        "float32": ("f", 2),
        "float64": ("d", 4),
    }
)
_FLOATS: Final = frozenset({"float32", "float64"})
_INT_RANGES: Final = MappingProxyType(
    {
        "int16": (-(2**15), 2**15 - 1),
        "uint16": (0, 2**16 - 1),
        "int32": (-(2**31), 2**31 - 1),
        "uint32": (0, 2**32 - 1),
        "int64": (-(2**63), 2**63 - 1),
        "uint64": (0, 2**64 - 1),
    }
)


def _check_type(type: str) -> None:
    if type not in _TYPES:
        raise CodecError(f"unknown signal type {type!r}; expected one of {sorted(_TYPES)}")


def _check_order(byte_order: str) -> None:
    if byte_order not in _ORDERS:
        raise CodecError(f"unknown byte order {byte_order!r}; expected one of {sorted(_ORDERS)}")


def _words_reversed(byte_order: str) -> bool:
    return byte_order in ("CDAB", "DCBA")


def _word_endian(byte_order: str) -> Literal["little", "big"]:
    """Byte order inside each register: swapped (BADC, DCBA) or not."""
    return "little" if byte_order in ("BADC", "DCBA") else "big"


def _to_bytes(registers: Sequence[int], byte_order: str) -> bytes:
    """Registers as received -> the value's bytes in big-endian (ABCD) order."""
    words = reversed(registers) if _words_reversed(byte_order) else iter(registers)
    endian = _word_endian(byte_order)
    return b"".join(w.to_bytes(2, endian) for w in words)


def _from_bytes(data: bytes, byte_order: str) -> list[int]:
    """The value's big-endian bytes (even length) -> registers as the device holds them."""
    endian = _word_endian(byte_order)
    words = [int.from_bytes(data[i : i + 2], endian) for i in range(0, len(data), 2)]
    if _words_reversed(byte_order):
        words.reverse()
    return words


def _check_bit(type: str, bit: int | None) -> None:
    """``bit`` is 0..15 for type ``bit``, and not given for any other type."""
    if type == "bit":
        if bit is None or isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 15:
            raise CodecError(f"bit: `bit` must be 0..15, not {bit!r}")
    elif bit is not None:
        raise CodecError(f"{type}: `bit` is only for type 'bit'")


def _check_registers(registers: Sequence[int], type: str) -> None:
    for i, reg in enumerate(registers):
        if isinstance(reg, bool) or not isinstance(reg, int) or not 0 <= reg <= 0xFFFF:
            raise CodecError(f"{type}: register [{i}] = {reg!r} is not a 16-bit value (0..65535)")


def register_count(type: SignalType, length: int | None = None) -> int:
    """How many registers one value of ``type`` occupies.

    ``bool``, ``bit``, ``int16`` and ``uint16``: 1; 32-bit types: 2; 64-bit types: 4; ``string``:
    ``length`` (required, >= 1). ``length`` given for any other type is a :class:`CodecError`, as
    it is in the config. Signals in the coil/discrete tables are one bit each; that is the
    planner's and driver's business, not this function's.
    """
    _check_type(type)
    if type == "string":
        if length is None or isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise CodecError(f"string: length must be a number of registers >= 1, not {length!r}")
        return length
    if length is not None:
        raise CodecError(f"{type}: length is only for type 'string'")
    if type in ("bool", "bit"):
        return 1
    return _NUMERIC[type][1]


def decode(
    registers: Sequence[int],
    type: SignalType,
    byte_order: ByteOrder = "ABCD",
    *,
    bit: int | None = None,
) -> Value:
    """Decode the registers of one value into its raw value (no scaling).

    * ``bool``: True when the register is not 0 (byte order cannot change that).
    * ``bit``: bit ``bit`` (0 = least significant, up to 15) of the register, after the byte order
      is applied, so bit numbers refer to the 16-bit value the device means.
    * integer types: ``int``; float types: ``float``, NaN and infinities included (see the module
      docstring).
    * ``string``: any number >= 1 of registers, decoded as UTF-8 with ``errors="replace"``; trailing
      NULs and spaces are stripped (leading and embedded NULs are kept).

    Raises :class:`CodecError` when the register count does not match the type (1, 2 or 4; >= 1 for
    strings), a register is not an int in 0..65535, ``bit`` is missing or out of 0..15 for ``bit``
    (or given for another type), or the type or byte order is unknown.
    """
    _check_type(type)
    _check_order(byte_order)
    _check_registers(registers, type)
    _check_bit(type, bit)

    if type == "string":
        if not registers:
            raise CodecError("string: needs at least 1 register, got 0")
        return _to_bytes(registers, byte_order).decode("utf-8", errors="replace").rstrip("\x00 ")

    expected = register_count(type)
    if len(registers) != expected:
        raise CodecError(f"{type}: needs {expected} register(s), got {len(registers)}")
    data = _to_bytes(registers, byte_order)
    if type == "bool":
        return data != b"\x00\x00"
    if type == "bit":
        assert bit is not None  # checked above
        return bool((int.from_bytes(data, "big") >> bit) & 1)
    fmt = _NUMERIC[type][0]
    (value,) = struct.unpack(">" + fmt, data)
    return float(value) if type in _FLOATS else int(value)


def encode(
    value: Value,
    type: SignalType,
    byte_order: ByteOrder = "ABCD",
    *,
    length: int | None = None,
) -> list[int]:
    """Encode one value into the registers a device with this byte order holds: the inverse of
    :func:`decode`.

    * ``bool`` takes a ``bool`` and encodes the register value 1 or 0 (``[1]``/``[0]``; with a
      byte-swapping order the 1 sits in the other byte, ``[0x0100]``, as such a device holds it).
    * integer types take an ``int`` (not a ``bool`` nor a ``float``) within the type's range.
    * float types take an ``int`` or ``float``; ``float32`` rounds to the nearest float32 and
      rejects finite values beyond its range. NaN and infinities are encoded.
    * ``string`` takes a ``str``, encoded as UTF-8 and padded with NULs to ``length`` registers
      (or to the fewest registers that hold it, at least 1, when ``length`` is None). Text longer
      than ``length`` registers is an error, never truncated.
    * ``bit`` cannot be encoded on its own (it is one bit of a register that holds others): encode
      the whole register as ``uint16``.

    Raises :class:`CodecError` for every value that cannot be encoded as asked.
    """
    _check_type(type)
    _check_order(byte_order)
    if type == "bit":
        raise CodecError("bit: cannot be encoded on its own; encode the whole register as uint16")
    if type != "string" and length is not None:
        raise CodecError(f"{type}: length is only for type 'string'")

    if type == "string":
        return _from_bytes(_string_bytes(value, length), byte_order)
    if type == "bool":
        if not isinstance(value, bool):
            raise CodecError(f"bool: expected a bool, got {value!r}")
        return _from_bytes(b"\x00\x01" if value else b"\x00\x00", byte_order)
    return _from_bytes(_number_bytes(value, type), byte_order)


def _string_bytes(value: Value, length: int | None) -> bytes:
    """A str as UTF-8, NUL-padded to ``length`` registers (or the fewest that hold it)."""
    if not isinstance(value, str):
        raise CodecError(f"string: expected a str, got {value!r}")
    text = value.encode("utf-8")
    count = register_count("string", length) if length is not None else max(1, (len(text) + 1) // 2)
    if len(text) > 2 * count:
        room = f"{count} register(s) hold {2 * count}"
        raise CodecError(f"string: {value!r} needs {len(text)} bytes; {room}")
    return text.ljust(2 * count, b"\x00")


def _number_bytes(value: Value, type: SignalType) -> bytes:
    """A number of an integer or float type, big-endian, checked against the type's range."""
    fmt = _NUMERIC[type][0]
    if type in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{type}: expected a number, got {value!r}")
        try:
            return struct.pack(">" + fmt, value)
        except (OverflowError, struct.error) as exc:
            raise CodecError(f"{type}: {value!r} is out of range ({exc})") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"{type}: expected an int, got {value!r}")
    low, high = _INT_RANGES[type]
    if not low <= value <= high:
        raise CodecError(f"{type}: {value} is out of range {low}..{high}")
    return struct.pack(">" + fmt, value)


def scaled(raw: Value, scale: float, offset: float) -> Value:
    """Engineering value ``raw * scale + offset``.

    ``bool`` and ``str`` are returned unchanged. An ``int`` stays the same ``int`` when
    ``scale == 1`` and ``offset == 0`` (so 64-bit counters keep every digit); otherwise the result
    is a ``float`` (which holds integers exactly only up to 2**53). NaN and infinities pass through.
    """
    if isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int) and scale == 1 and offset == 0:
        return raw
    return raw * float(scale) + float(offset)


# --------------------------------------------------------------------------------------------
# Compiled decoders: the same results as decode(), for the driver's hot path


class Block:
    """The data bytes of one register reply (registers big-endian, as on the wire), with each
    register's bytes also swapped, so that compiled decoders read any byte order with one
    ``struct.unpack_from`` each."""

    __slots__ = ("be", "registers", "sw")

    def __init__(self, data: bytes) -> None:
        swapped = array("H", data)
        swapped.byteswap()
        self.be, self.sw = data, swapped.tobytes()
        self.registers = struct.unpack(f">{len(data) // 2}H", data)


Decoder = Callable[[Block, int], Value]

# Which packed buffer and which struct endianness give the value's bytes in ABCD order:
# ABCD is the wire order; DCBA is all bytes reversed (little-endian over the wire bytes); BADC has
# each register's bytes swapped (the swapped buffer is ABCD); CDAB is the swapped buffer reversed.
_LAYOUT: Final = MappingProxyType(
    {"ABCD": (False, ">"), "DCBA": (False, "<"), "BADC": (True, ">"), "CDAB": (True, "<")}
)


def compile_decoder(
    type: SignalType,
    byte_order: ByteOrder = "ABCD",
    *,
    bit: int | None = None,
    length: int | None = None,
    scale: float = 1.0,
    offset: float = 0.0,
) -> Decoder:
    """A function ``(block, index) -> value`` equal to ``scaled(decode(registers, type, byte_order,
    bit=bit), scale, offset)`` of the ``register_count(type, length)`` registers from ``index`` on
    (NaN for NaN), but without the per-call checks: the arguments are checked here once, with the
    same :class:`CodecError` s as :func:`decode`. The caller guarantees that the value lies inside
    the block."""
    count = register_count(type, length)
    _check_order(byte_order)
    _check_bit(type, bit)
    if type == "string":
        return lambda block, i: decode(block.registers[i : i + count], "string", byte_order)
    if type == "bool":
        return lambda block, i: block.registers[i] != 0
    swapped, endian = _LAYOUT[byte_order]
    if type == "bit":
        assert bit is not None
        word = struct.Struct(">H" if byte_order in ("ABCD", "CDAB") else "<H").unpack_from
        mask = 1 << bit
        return lambda block, i: bool(word(block.be, 2 * i)[0] & mask)
    unpack = struct.Struct(endian + _NUMERIC[type][0]).unpack_from
    if scale == 1 and offset == 0:  # integers stay exact integers, as in scaled()
        if swapped:
            return lambda block, i: unpack(block.sw, 2 * i)[0]
        return lambda block, i: unpack(block.be, 2 * i)[0]
    k, c = float(scale), float(offset)
    if swapped:
        return lambda block, i: unpack(block.sw, 2 * i)[0] * k + c
    return lambda block, i: unpack(block.be, 2 * i)[0] * k + c
