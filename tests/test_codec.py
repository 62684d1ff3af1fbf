"""Table and property tests of the Modbus register codec (drivers.modbus.codec).

The expected registers are written out by hand from the byte-order definitions (ABCD = big-endian,
CDAB = words reversed, BADC = bytes swapped inside words, DCBA = fully little-endian), and the
codec is cross-checked against pymodbus's own conversions where pymodbus can express the order.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Literal, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from drivers.modbus.codec import Block, CodecError, compile_decoder, decode, encode, register_count, scaled
from drivers.modbus.config import ByteOrder, SignalType

ORDERS: tuple[ByteOrder, ...] = get_args(ByteOrder)
INT_RANGES: dict[SignalType, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
FLOAT_TYPES: tuple[SignalType, ...] = ("float32", "float64")
NUMERIC_TYPES: tuple[SignalType, ...] = (*INT_RANGES, *FLOAT_TYPES)
TEXT_ALPHABET = st.sampled_from(list("AZaz09 -_.:/\x00\t\x7fäüß€ΩЖ中😀"))  # 1 to 4 UTF-8 bytes
PROPERTY = settings(max_examples=60, deadline=None, database=None)

F32_3_14 = 3.140000104904175  # 3.14 rounded to float32, exactly

# (value, type, byte order, registers as the device holds them): encode gives the registers and
# decode gives the value back.
KNOWN: list[tuple[Any, SignalType, ByteOrder, list[int]]] = [
    # bool: the register is 1 or 0; a byte-swapping device holds the 1 in the other byte
    (True, "bool", "ABCD", [0x0001]),
    (True, "bool", "CDAB", [0x0001]),
    (True, "bool", "BADC", [0x0100]),
    (True, "bool", "DCBA", [0x0100]),
    (False, "bool", "ABCD", [0x0000]),
    (False, "bool", "DCBA", [0x0000]),
    # 16-bit: CDAB is ABCD, BADC and DCBA swap the two bytes
    (0x1234, "uint16", "ABCD", [0x1234]),
    (0x1234, "uint16", "CDAB", [0x1234]),
    (0x1234, "uint16", "BADC", [0x3412]),
    (0x1234, "uint16", "DCBA", [0x3412]),
    (65535, "uint16", "ABCD", [0xFFFF]),
    (-2, "int16", "ABCD", [0xFFFE]),
    (-2, "int16", "CDAB", [0xFFFE]),
    (-2, "int16", "BADC", [0xFEFF]),
    (-2, "int16", "DCBA", [0xFEFF]),
    (-32768, "int16", "ABCD", [0x8000]),
    (-32768, "int16", "BADC", [0x0080]),
    (300, "int16", "DCBA", [0x2C01]),
    # 32-bit: -123456 = 0xFFFE1DC0, 0x12345678, 3.14 = 0x4048F5C3
    (-123456, "int32", "ABCD", [0xFFFE, 0x1DC0]),
    (-123456, "int32", "CDAB", [0x1DC0, 0xFFFE]),
    (-123456, "int32", "BADC", [0xFEFF, 0xC01D]),
    (-123456, "int32", "DCBA", [0xC01D, 0xFEFF]),
    (0x12345678, "uint32", "ABCD", [0x1234, 0x5678]),
    (0x12345678, "uint32", "CDAB", [0x5678, 0x1234]),
    (0x12345678, "uint32", "BADC", [0x3412, 0x7856]),
    (0x12345678, "uint32", "DCBA", [0x7856, 0x3412]),
    (4294967295, "uint32", "CDAB", [0xFFFF, 0xFFFF]),
    (F32_3_14, "float32", "ABCD", [0x4048, 0xF5C3]),
    (F32_3_14, "float32", "CDAB", [0xF5C3, 0x4048]),
    (F32_3_14, "float32", "BADC", [0x4840, 0xC3F5]),
    (F32_3_14, "float32", "DCBA", [0xC3F5, 0x4840]),
    (-2.5, "float32", "ABCD", [0xC020, 0x0000]),
    (-2.5, "float32", "DCBA", [0x0000, 0x20C0]),
    (math.inf, "float32", "CDAB", [0x0000, 0x7F80]),
    # 64-bit: -2 = 0xFFFFFFFFFFFFFFFE, 0x0102030405060708, pi = 0x400921FB54442D18
    (-2, "int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
    (-2, "int64", "CDAB", [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]),
    (-2, "int64", "BADC", [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF]),
    (-2, "int64", "DCBA", [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    (0x0102030405060708, "uint64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708]),
    (0x0102030405060708, "uint64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
    (0x0102030405060708, "uint64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807]),
    (0x0102030405060708, "uint64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
    (2**64 - 1, "uint64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    (math.pi, "float64", "ABCD", [0x4009, 0x21FB, 0x5444, 0x2D18]),
    (math.pi, "float64", "CDAB", [0x2D18, 0x5444, 0x21FB, 0x4009]),
    (math.pi, "float64", "BADC", [0x0940, 0xFB21, 0x4454, 0x182D]),
    (math.pi, "float64", "DCBA", [0x182D, 0x4454, 0xFB21, 0x0940]),
    (1.0, "float64", "ABCD", [0x3FF0, 0x0000, 0x0000, 0x0000]),
    (1.0, "float64", "CDAB", [0x0000, 0x0000, 0x0000, 0x3FF0]),
    (-math.inf, "float64", "BADC", [0xF0FF, 0x0000, 0x0000, 0x0000]),
]

# (text, registers, byte order, registers): "ABC" is 41 42 43, padded with a NUL
STRINGS: list[tuple[str, int, ByteOrder, list[int]]] = [
    ("ABC", 2, "ABCD", [0x4142, 0x4300]),
    ("ABC", 2, "CDAB", [0x4300, 0x4142]),
    ("ABC", 2, "BADC", [0x4241, 0x0043]),
    ("ABC", 2, "DCBA", [0x0043, 0x4241]),
    ("ABCD", 2, "CDAB", [0x4344, 0x4142]),
    ("T1", 3, "ABCD", [0x5431, 0x0000, 0x0000]),
    ("T1", 3, "CDAB", [0x0000, 0x0000, 0x5431]),
    ("T1", 3, "BADC", [0x3154, 0x0000, 0x0000]),
    ("T1", 3, "DCBA", [0x0000, 0x0000, 0x3154]),
    ("ü", 1, "ABCD", [0xC3BC]),  # UTF-8
    ("", 1, "ABCD", [0x0000]),
]


def test_known_values_cover_every_type_and_order() -> None:
    seen = {(t, o) for _, t, o, _ in KNOWN} | {("string", o) for *_, o, _ in STRINGS}
    missing = {(t, o) for t in get_args(SignalType) for o in ORDERS if t != "bit"} - seen
    assert not missing


@pytest.mark.parametrize(("value", "type_", "order", "registers"), KNOWN)
def test_encode_known(value: Any, type_: SignalType, order: ByteOrder, registers: list[int]) -> None:
    assert encode(value, type_, order) == registers


@pytest.mark.parametrize(("value", "type_", "order", "registers"), KNOWN)
def test_decode_known(value: Any, type_: SignalType, order: ByteOrder, registers: list[int]) -> None:
    result = decode(registers, type_, order)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        ("ABCD", [0x4048, 0xF5C3]),
        ("CDAB", [0xF5C3, 0x4048]),
        ("BADC", [0x4840, 0xC3F5]),
        ("DCBA", [0xC3F5, 0x4840]),
    ],
)
def test_float32_rounds_to_nearest(order: ByteOrder, registers: list[int]) -> None:
    assert encode(3.14, "float32", order) == registers
    assert decode(registers, "float32", order) == pytest.approx(3.14, rel=1e-7)


@pytest.mark.parametrize(("text", "length", "order", "registers"), STRINGS)
def test_string_known(text: str, length: int, order: ByteOrder, registers: list[int]) -> None:
    assert encode(text, "string", order, length=length) == registers
    assert decode(registers, "string", order) == text


@pytest.mark.parametrize(
    ("registers", "expected"),
    [
        ([0x4142, 0x2020], "AB"),  # trailing spaces stripped
        ([0x4120, 0x0000], "A"),  # space then NULs
        ([0x0041, 0x0042], "\x00A\x00B"),  # leading and embedded NULs kept
        ([0xFF41], "\ufffdA"),  # invalid UTF-8 is replaced, not an error
        ([0x2041], " A"),  # leading space kept
    ],
)
def test_string_decoding_details(registers: list[int], expected: str) -> None:
    assert decode(registers, "string") == expected


def test_string_without_length_takes_fewest_registers() -> None:
    assert encode("ABC", "string") == [0x4142, 0x4300]
    assert encode("AB", "string") == [0x4142]
    assert encode("", "string") == [0x0000]


@pytest.mark.parametrize(
    ("registers", "order", "expected"),
    [
        ([0x0000], "ABCD", False),
        ([0x0001], "ABCD", True),
        ([0x0100], "ABCD", True),
        ([0x8000], "DCBA", True),
        ([0xFFFF], "BADC", True),
    ],
)
def test_decode_bool(registers: list[int], order: ByteOrder, expected: bool) -> None:
    assert decode(registers, "bool", order) is expected


@pytest.mark.parametrize(
    ("register", "bit", "order", "expected"),
    [
        (0x0005, 0, "ABCD", True),
        (0x0005, 1, "ABCD", False),
        (0x0005, 2, "ABCD", True),
        (0x8000, 15, "ABCD", True),
        (0x8000, 7, "ABCD", False),
        (0x0100, 8, "CDAB", True),
        # a byte swap applies first: bit numbers are those of the value the device means
        (0x0100, 0, "BADC", True),
        (0x0100, 8, "BADC", False),
        (0x0001, 8, "DCBA", True),
        (0x0080, 15, "DCBA", True),
    ],
)
def test_decode_bit(register: int, bit: int, order: ByteOrder, expected: bool) -> None:
    assert decode([register], "bit", order, bit=bit) is expected


@pytest.mark.parametrize(
    ("type_", "length", "count"),
    [
        ("bool", None, 1),
        ("bit", None, 1),
        ("int16", None, 1),
        ("uint16", None, 1),
        ("int32", None, 2),
        ("uint32", None, 2),
        ("float32", None, 2),
        ("int64", None, 4),
        ("uint64", None, 4),
        ("float64", None, 4),
        ("string", 1, 1),
        ("string", 10, 10),
        ("string", 125, 125),
    ],
)
def test_register_count(type_: SignalType, length: int | None, count: int) -> None:
    assert register_count(type_, length) == count


@pytest.mark.parametrize(("type_", "length"), [("string", None), ("string", 0), ("uint16", 2), ("no", None)])
def test_register_count_errors(type_: Any, length: int | None) -> None:
    with pytest.raises(CodecError):
        register_count(type_, length)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("registers", "type_", "match"),
    [
        ([1, 2], "uint16", "needs 1 register"),
        ([], "int16", "needs 1 register"),
        ([], "bool", "needs 1 register"),
        ([1], "int32", "needs 2 register"),
        ([1, 2, 3], "float32", "needs 2 register"),
        ([1, 2, 3], "float64", "needs 4 register"),
        ([1, 2], "uint64", "needs 4 register"),
        ([], "string", "at least 1 register"),
        ([65536], "uint16", "not a 16-bit value"),
        ([0, -1], "int32", r"register \[1\] = -1"),
        ([1.5], "uint16", "not a 16-bit value"),
        ([True], "uint16", "not a 16-bit value"),
        ([0x4142, 70000], "string", "not a 16-bit value"),
    ],
)
def test_decode_errors(registers: list[Any], type_: SignalType, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode(registers, type_)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"type": "bit"}, "`bit` must be 0..15"),
        ({"type": "bit", "bit": 16}, "`bit` must be 0..15"),
        ({"type": "bit", "bit": -1}, "`bit` must be 0..15"),
        ({"type": "uint16", "bit": 3}, "only for type 'bit'"),
        ({"type": "uint8"}, "unknown signal type"),
        ({"type": "uint16", "byte_order": "abcd"}, "unknown byte order"),
    ],
)
def test_decode_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode([0], **kwargs)


@pytest.mark.parametrize(
    ("value", "type_", "length", "match"),
    [
        (32768, "int16", None, "out of range -32768..32767"),
        (-32769, "int16", None, "out of range"),
        (-1, "uint16", None, "out of range 0..65535"),
        (65536, "uint16", None, "out of range"),
        (2**31, "int32", None, "out of range"),
        (-1, "uint32", None, "out of range"),
        (2**63, "int64", None, "out of range"),
        (2**64, "uint64", None, "out of range"),
        (1e39, "float32", None, "out of range"),
        (10**400, "float64", None, "out of range"),
        (1.5, "int16", None, "expected an int"),
        (True, "uint16", None, "expected an int"),
        ("7", "int32", None, "expected an int"),
        (1, "bool", None, "expected a bool"),
        (True, "float32", None, "expected a number"),
        ("1.0", "float64", None, "expected a number"),
        (5, "string", 2, "expected a str"),
        ("ABCDE", "string", 2, "needs 5 bytes"),
        (True, "bit", None, "cannot be encoded on its own"),
        (1, "uint16", 1, "length is only for type 'string'"),
        ("x", "string", 0, "length must be"),
    ],
)
def test_encode_errors(value: Any, type_: SignalType, length: int | None, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        encode(value, type_, length=length)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


@pytest.mark.parametrize("order", ORDERS)
def test_nan_and_inf_are_returned(order: ByteOrder) -> None:
    nan32 = decode(encode(math.nan, "float32", order), "float32", order)
    nan64 = decode(encode(math.nan, "float64", order), "float64", order)
    assert isinstance(nan32, float)
    assert isinstance(nan64, float)
    assert math.isnan(nan32)
    assert math.isnan(nan64)
    assert decode(encode(-math.inf, "float32", order), "float32", order) == -math.inf
    assert decode(encode(math.inf, "float64", order), "float64", order) == math.inf


def test_nan_registers_decode_to_nan() -> None:
    value = decode([0x7FC0, 0x0000], "float32")
    assert isinstance(value, float)
    assert math.isnan(value)
    value = decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], "float64")  # a NaN with every payload bit set
    assert isinstance(value, float)
    assert math.isnan(value)


# ---------------------------------------------------------------------------------------------
# Scaling


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        (42, 1.0, 0.0, 42),
        (2**64 - 1, 1.0, 0.0, 2**64 - 1),  # an int stays exact
        (42, 0.1, 0.0, pytest.approx(4.2)),
        (42, 1.0, -2.0, 40.0),
        (-5, 2.0, 1.0, -9.0),
        (1.5, 1.0, 0.0, 1.5),
        (1.5, 2.0, 0.5, 3.5),
        (True, 10.0, 5.0, True),
        (False, 0.5, 1.0, False),
        ("T12", 2.0, 1.0, "T12"),
    ],
)
def test_scaled(raw: Any, scale: float, offset: float, expected: Any) -> None:
    result = scaled(raw, scale, offset)
    assert result == expected
    if not isinstance(raw, bool | str):
        expected_type = int if isinstance(raw, int) and scale == 1 and offset == 0 else float
        assert type(result) is expected_type
    else:
        assert result is raw


def test_scaled_passes_nan_through() -> None:
    result = scaled(math.nan, 2.0, 1.0)
    assert isinstance(result, float)
    assert math.isnan(result)


# ---------------------------------------------------------------------------------------------
# Round trips (hypothesis)


@PROPERTY
@given(data=st.data(), type_=st.sampled_from(list(INT_RANGES)), order=st.sampled_from(ORDERS))
def test_int_round_trip(data: st.DataObject, type_: SignalType, order: ByteOrder) -> None:
    low, high = INT_RANGES[type_]
    value = data.draw(st.integers(low, high))
    registers = encode(value, type_, order)
    assert len(registers) == register_count(type_)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(registers, type_, order) == value


@PROPERTY
@given(value=st.floats(width=32, allow_nan=False), order=st.sampled_from(ORDERS))
def test_float32_round_trip(value: float, order: ByteOrder) -> None:
    assert decode(encode(value, "float32", order), "float32", order) == value


@PROPERTY
@given(value=st.floats(allow_nan=False), order=st.sampled_from(ORDERS))
def test_float64_round_trip(value: float, order: ByteOrder) -> None:
    result = decode(encode(value, "float64", order), "float64", order)
    assert result == value
    assert math.copysign(1.0, result) == math.copysign(1.0, value)  # -0.0 stays -0.0


@PROPERTY
@given(data=st.data(), type_=st.sampled_from(NUMERIC_TYPES), order=st.sampled_from(ORDERS))
def test_registers_round_trip(data: st.DataObject, type_: SignalType, order: ByteOrder) -> None:
    n = register_count(type_)
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    value = decode(registers, type_, order)
    if isinstance(value, float) and math.isnan(value):
        return  # a NaN's payload need not survive the trip through a Python float
    assert encode(value, type_, order) == registers


@PROPERTY
@given(text=st.text(TEXT_ALPHABET, max_size=20), order=st.sampled_from(ORDERS))
def test_string_round_trip(text: str, order: ByteOrder) -> None:
    text = text.rstrip("\x00 ")  # decode strips these
    length = max(1, (len(text.encode()) + 1) // 2) + 1
    registers = encode(text, "string", order, length=length)
    assert len(registers) == length
    assert decode(registers, "string", order) == text


# ---------------------------------------------------------------------------------------------
# Cross-checks against pymodbus (ABCD = word_order "big", CDAB = "little"; pymodbus has no byte
# swap, so BADC/DCBA are checked by swapping the bytes of each register around it, as its docs say)

C = ModbusTcpClient
PYMODBUS_TYPES = {
    "int16": C.DATATYPE.INT16,
    "uint16": C.DATATYPE.UINT16,
    "int32": C.DATATYPE.INT32,
    "uint32": C.DATATYPE.UINT32,
    "int64": C.DATATYPE.INT64,
    "uint64": C.DATATYPE.UINT64,
    "float32": C.DATATYPE.FLOAT32,
    "float64": C.DATATYPE.FLOAT64,
}
SAMPLES: dict[str, list[Any]] = {
    **{t: [low, high, 0, 1, -1 if low else 2, (low + high) // 3] for t, (low, high) in INT_RANGES.items()},
    "float32": [0.0, -0.0, 1.0, F32_3_14, -2.5, 1e-40, 3.4028234663852886e38, math.inf, -math.inf],
    "float64": [0.0, -0.0, math.pi, -1e300, 5e-324, math.inf, -math.inf],
}


def _swap_bytes(registers: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def _pymodbus_to_registers(value: Any, type_: str, order: ByteOrder) -> list[int]:
    word_order: Literal["big", "little"] = "little" if order in ("CDAB", "DCBA") else "big"
    registers = C.convert_to_registers(value, PYMODBUS_TYPES[type_], word_order=word_order)
    return _swap_bytes(registers) if order in ("BADC", "DCBA") else registers


def _pymodbus_from_registers(registers: list[int], type_: str, order: ByteOrder) -> Any:
    word_order: Literal["big", "little"] = "little" if order in ("CDAB", "DCBA") else "big"
    if order in ("BADC", "DCBA"):
        registers = _swap_bytes(registers)
    return C.convert_from_registers(registers, PYMODBUS_TYPES[type_], word_order=word_order)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("type_", "value"), [(t, v) for t, values in SAMPLES.items() for v in values])
def test_matches_pymodbus(type_: SignalType, value: Any, order: ByteOrder) -> None:
    registers = encode(value, type_, order)
    assert registers == _pymodbus_to_registers(value, type_, order)
    assert decode(registers, type_, order) == _pymodbus_from_registers(registers, type_, order)


@PROPERTY
@given(data=st.data(), type_=st.sampled_from(NUMERIC_TYPES), order=st.sampled_from(ORDERS))
def test_decode_matches_pymodbus(data: st.DataObject, type_: SignalType, order: ByteOrder) -> None:
    n = register_count(type_)
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    ours = decode(registers, type_, order)
    theirs = _pymodbus_from_registers(registers, type_, order)
    if isinstance(ours, float) and math.isnan(ours):
        assert math.isnan(theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("order", ["ABCD", "CDAB"])
@pytest.mark.parametrize("text", ["ABC", "ABCD", "Werkzeug T3", "ü"])
def test_string_matches_pymodbus(text: str, order: ByteOrder) -> None:
    # pymodbus STRING + word_order "little" reverses the whole register list: our CDAB
    word_order: Literal["big", "little"] = "little" if order == "CDAB" else "big"
    registers = encode(text, "string", order)
    assert registers == C.convert_to_registers(text, C.DATATYPE.STRING, word_order=word_order)
    assert decode(registers, "string", order) == C.convert_from_registers(
        registers, C.DATATYPE.STRING, word_order=word_order
    )


@pytest.mark.parametrize(
    ("type_", "fmt", "value"),
    [("float32", "<f", F32_3_14), ("int64", "<q", -123456789), ("float64", "<d", math.e)],
)
def test_struct_agrees_on_dcba(type_: SignalType, fmt: str, value: float) -> None:
    # DCBA is the fully little-endian layout: struct's "<" bytes read as big-endian registers
    data = struct.pack(fmt, value)
    registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    assert encode(value, type_, "DCBA") == registers


# --------------------------------------------------------------------------------------------
# Compiled decoders (the driver's hot path) give exactly what decode() gives

ALL_TYPES: tuple[SignalType, ...] = get_args(SignalType)


def wire(registers: list[int]) -> Block:
    """The block of a reply carrying ``registers``."""
    return Block(struct.pack(f">{len(registers)}H", *registers))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(("value", "type_", "order", "registers"), KNOWN)
def test_compiled_decoder_known(value: Any, type_: SignalType, order: ByteOrder, registers: list[int]) -> None:
    length = len(registers) if type_ == "string" else None
    block = wire([0xDEAD, *registers, 0xBEEF])  # the value in the middle of a longer reply
    assert _same(compile_decoder(type_, order, length=length)(block, 1), decode(registers, type_, order))


@PROPERTY
@given(data=st.data(), type_=st.sampled_from(ALL_TYPES), order=st.sampled_from(ORDERS))
def test_compiled_decoder_equals_decode_then_scaled(data: st.DataObject, type_: SignalType, order: ByteOrder) -> None:
    length = data.draw(st.integers(1, 6)) if type_ == "string" else None
    bit = data.draw(st.integers(0, 15)) if type_ == "bit" else None
    count = register_count(type_, length)
    words = st.integers(0, 0xFFFF)
    before = data.draw(st.lists(words, max_size=3))
    registers = data.draw(st.lists(words, min_size=count, max_size=count))
    after = data.draw(st.lists(words, max_size=3))
    scale, offset = data.draw(st.sampled_from([(1.0, 0.0), (0.1, 0.0), (1.0, -5.0), (2.5, 100.0)]))
    block = wire([*before, *registers, *after])
    got = compile_decoder(type_, order, bit=bit, length=length, scale=scale, offset=offset)(block, len(before))
    assert _same(got, scaled(decode(registers, type_, order, bit=bit), scale, offset))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"type": "bit", "bit": None}, "`bit` must be 0..15"),
        ({"type": "bit", "bit": 16}, "`bit` must be 0..15"),
        ({"type": "uint16", "bit": 1}, "only for type 'bit'"),
        ({"type": "string"}, "length must be"),
        ({"type": "int32", "byte_order": "ABDC"}, "unknown byte order"),
        ({"type": "int24"}, "unknown signal type"),
    ],
)
def test_compiled_decoder_checks_its_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(CodecError, match=match):
        compile_decoder(**kwargs)


def test_a_block_keeps_the_wire_bytes_and_swaps_each_register() -> None:
    block = Block(bytes([0x12, 0x34, 0xAB, 0xCD]))
    assert block.be == bytes([0x12, 0x34, 0xAB, 0xCD])
    assert block.sw == bytes([0x34, 0x12, 0xCD, 0xAB])
    assert block.registers == (0x1234, 0xABCD)
