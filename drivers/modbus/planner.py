"""Modbus read planner: which requests one poll makes, pure and without pymodbus.

Each signal occupies a :class:`Span` of one table: ``count`` registers (holding, input) or
``count`` bits (coil, discrete). :func:`plan_reads` merges the spans of each table into the fewest
:class:`ReadRequest` s the protocol allows, and :func:`split_request` halves a merged request that
the device refused, so the driver can find the refused addresses by bisection.

Guarantees of :func:`plan_reads` (checked by property tests against a brute-force reference):

* every span that covers no refused address lies wholly inside exactly one request of its table,
  which lists its key; spans that do cover one are in no request (see :func:`excluded`);
* no request is longer than the limit (125 registers, 2000 bits, or the lower limit passed);
* no request contains a refused address, and no run of unused addresses inside a request is
  longer than ``max_gap`` registers, or ``max_gap * 16`` bits in the coil and discrete tables:
  a gap of 16 coils costs the 2 response bytes one register does, so the same ``max_gap`` bridges
  the same number of wasted bytes in every table;
* the number of requests is the minimum under these rules;
* the output depends only on the set of spans, not on their order: requests are sorted by table
  (holding, input, coil, discrete) then address, and the keys of a request by address, end, key.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, get_args

from drivers.modbus.config import RegisterTable

__all__ = ["MAX_BITS", "MAX_REGISTERS", "ReadRequest", "Span", "excluded", "plan_reads", "split_request"]

MAX_REGISTERS: Final = 125
"""Registers one read of holding or input registers may return (Modbus function codes 3 and 4)."""
MAX_BITS: Final = 2000
"""Bits one read of coils or discrete inputs may return (Modbus function codes 1 and 2)."""

_TABLES: Final[tuple[RegisterTable, ...]] = ("holding", "input", "coil", "discrete")
_BIT_TABLES: Final = frozenset({"coil", "discrete"})
_BITS_PER_REGISTER: Final = 16
_ADDRESSES: Final = 65536

assert set(_TABLES) == set(get_args(RegisterTable))


@dataclass(frozen=True, slots=True)
class Span:
    """One signal's footprint: ``count`` registers (or bits, in the coil and discrete tables)
    from ``address`` on. ``key`` names the signal and must be unique among the spans planned
    together. Raises :class:`ValueError` when the span does not fit the 0..65535 address space.
    """

    table: RegisterTable
    address: int
    count: int
    key: str

    def __post_init__(self) -> None:
        if self.table not in _TABLES:
            raise ValueError(f"span {self.key!r}: unknown table {self.table!r}")
        if self.count < 1:
            raise ValueError(f"span {self.key!r}: count must be >= 1, not {self.count}")
        if not 0 <= self.address <= _ADDRESSES - self.count:
            last = self.address + self.count - 1
            raise ValueError(f"span {self.key!r}: {self.address}..{last} is outside 0..65535")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers (or bits) of ``table`` from ``address`` on, carrying the
    signals ``keys``. ``str()`` gives the line ``andon-agent check`` prints, e.g.
    ``holding 100..109 (10 registers: tool1_wear, tool2_wear)``.
    """

    table: RegisterTable
    address: int
    count: int
    keys: tuple[str, ...]

    def __str__(self) -> str:
        unit = "bit" if self.table in _BIT_TABLES else "register"
        plural = "" if self.count == 1 else "s"
        last = self.address + self.count - 1
        return f"{self.table} {self.address}..{last} ({self.count} {unit}{plural}: {', '.join(self.keys)})"


def _end(span: Span) -> int:
    return span.address + span.count


def _order(span: Span) -> tuple[int, int, int, str]:
    return (_TABLES.index(span.table), span.address, _end(span), span.key)


def _refused_by_table(refused: Iterable[tuple[RegisterTable, int]]) -> dict[str, list[int]]:
    out: dict[str, set[int]] = {table: set() for table in _TABLES}
    for table, address in refused:
        if table not in out:
            raise ValueError(f"refused address {address} of unknown table {table!r}")
        out[table].add(address)
    return {table: sorted(addresses) for table, addresses in out.items()}


def _any_in(sorted_addresses: Sequence[int], start: int, stop: int) -> bool:
    """Whether any address lies in ``start <= a < stop``."""
    i = bisect.bisect_left(sorted_addresses, start)
    return i < len(sorted_addresses) and sorted_addresses[i] < stop


def _split_out(
    spans: Iterable[Span], refused: Iterable[tuple[RegisterTable, int]]
) -> tuple[list[Span], list[Span], dict[str, list[int]]]:
    """(spans to plan, spans covering a refused address, refused addresses per table), both
    span lists sorted by table, address, end and key. Raises ValueError on duplicate keys."""
    ordered = sorted(spans, key=_order)
    seen: set[str] = set()
    for span in ordered:
        if span.key in seen:
            raise ValueError(f"duplicate span key {span.key!r}")
        seen.add(span.key)
    by_table = _refused_by_table(refused)
    keep: list[Span] = []
    drop: list[Span] = []
    for span in ordered:
        (drop if _any_in(by_table[span.table], span.address, _end(span)) else keep).append(span)
    return keep, drop, by_table


def plan_reads(
    spans: Iterable[Span],
    *,
    max_gap: int = 8,
    refused: Iterable[tuple[RegisterTable, int]] = (),
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """Merge the spans of each table into the fewest reads (see the module docstring for what is
    guaranteed).

    Per table, spans are taken in address order and each one joins the current request when the
    request would stay within the limit and the unused run before the span (if any) is at most
    ``max_gap`` registers (``max_gap * 16`` bits) long and holds no refused address; otherwise it
    opens a new request. Overlapping spans (e.g. several ``bit`` signals of one register) share a
    request. The greedy is optimal because spans come in address order, so a span that cannot join
    the open request cannot join an earlier one either, and no plan with as few requests for the
    spans so far has a request that starts later or reaches further than the open one.

    ``refused`` lists ``(table, address)`` pairs the device answered "illegal data address" for:
    a span covering one is left out (:func:`excluded` names it); a gap holding one is not bridged.

    Raises :class:`ValueError` for a span longer than its table's limit, duplicate keys, a negative
    ``max_gap``, or limits outside 1..125 registers / 1..2000 bits.
    """
    spans = list(spans)
    _check_limits(spans, max_gap, max_registers, max_bits)
    keep, _, refused_by_table = _split_out(spans, refused)
    return _merge(keep, refused_by_table, max_gap, max_registers, max_bits)


def _check_limits(spans: Sequence[Span], max_gap: int, max_registers: int, max_bits: int) -> None:
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, not {max_gap}")
    if not 1 <= max_registers <= MAX_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS}, not {max_registers}")
    if not 1 <= max_bits <= MAX_BITS:
        raise ValueError(f"max_bits must be 1..{MAX_BITS}, not {max_bits}")
    for span in spans:
        bits = span.table in _BIT_TABLES
        limit = max_bits if bits else max_registers
        if span.count > limit:
            unit = "bits" if bits else "registers"
            raise ValueError(
                f"span {span.key!r} ({span.table} {span.address}, {span.count} {unit}) "
                f"is longer than one read may be ({limit} {unit})"
            )


def _merge(
    keep: Sequence[Span], refused_by_table: Mapping[str, list[int]], max_gap: int, max_registers: int, max_bits: int
) -> list[ReadRequest]:
    """The greedy of :func:`plan_reads` over spans sorted by table, address, end and key."""
    requests: list[ReadRequest] = []
    start = stop = 0
    keys: list[str] = []
    table: RegisterTable = "holding"
    for span in keep:  # sorted by table, address, end, key
        bits = span.table in _BIT_TABLES
        limit = max_bits if bits else max_registers
        gap = max_gap * _BITS_PER_REGISTER if bits else max_gap
        if (
            keys
            and span.table == table
            and span.address - stop <= gap
            and max(stop, _end(span)) - start <= limit
            and not _any_in(refused_by_table[table], stop, span.address)
        ):
            stop = max(stop, _end(span))
            keys.append(span.key)
            continue
        if keys:
            requests.append(ReadRequest(table, start, stop - start, tuple(keys)))
        table, start, stop, keys = span.table, span.address, _end(span), [span.key]
    if keys:
        requests.append(ReadRequest(table, start, stop - start, tuple(keys)))
    return requests


def excluded(spans: Iterable[Span], refused: Iterable[tuple[RegisterTable, int]]) -> list[str]:
    """Keys of the spans :func:`plan_reads` leaves out because they cover a refused address, in
    table, address, end and key order."""
    _, drop, _ = _split_out(spans, refused)
    return [span.key for span in drop]


def split_request(req: ReadRequest, spans_by_key: Mapping[str, Span]) -> list[ReadRequest]:
    """Split a refused read into two smaller ones, for the driver's bisection.

    When a device answers "illegal data address" to a merged read, some address inside it is not
    mapped. The driver re-issues both halves returned here and splits again each half that fails
    too. Each half carries whole spans only (spans sharing a footprint stay together), and its
    bounds shrink to the spans it holds, so a bridged gap may fall out. The halves are cut at an
    address no span crosses when there is one, as near the middle as possible; otherwise (spans
    overlap across every boundary) the distinct footprints are divided in address order and the
    halves may overlap. Either way each half has fewer distinct footprints than ``req``, so the
    bisection ends.

    Returns ``[]`` when ``req`` holds a single distinct footprint: it cannot be split, so the
    addresses of that span are the refused ones. (When both halves succeed, the refused address
    lay in a bridged gap, which no signal needs.)

    Raises :class:`ValueError` when a key of ``req`` is missing from ``spans_by_key`` or its span is
    not inside ``req``.
    """
    spans: list[Span] = []
    for key in req.keys:
        span = spans_by_key.get(key)
        if span is None:
            raise ValueError(f"split_request: no span for key {key!r}")
        if span.table != req.table or span.address < req.address or _end(span) > req.address + req.count:
            raise ValueError(f"split_request: span {key!r} is not inside the request {req}")
        spans.append(span)
    spans.sort(key=_order)
    footprints = sorted({(span.address, _end(span)) for span in spans})
    if len(footprints) < 2:
        return []

    # Candidate cut i: footprints[:i] | footprints[i:]. Clean when no footprint crosses it.
    suffix_stop = [stop for _, stop in footprints]
    for i in range(len(footprints) - 2, -1, -1):
        suffix_stop[i] = max(suffix_stop[i], suffix_stop[i + 1])
    best: tuple[bool, int, int] | None = None  # (not clean, larger half's width, i)
    left_stop = footprints[0][1]
    for i in range(1, len(footprints)):
        right_start, right_stop = footprints[i][0], suffix_stop[i]
        clean = left_stop <= right_start
        width = max(left_stop - footprints[0][0], right_stop - right_start)
        candidate = (not clean, width, i)
        if best is None or candidate < best:
            best = candidate
        left_stop = max(left_stop, footprints[i][1])
    assert best is not None
    cut = set(footprints[best[2] :])

    halves: list[ReadRequest] = []
    for side in (False, True):
        part = [span for span in spans if ((span.address, _end(span)) in cut) == side]
        lo = min(span.address for span in part)
        hi = max(_end(span) for span in part)
        halves.append(ReadRequest(req.table, lo, hi - lo, tuple(span.key for span in part)))
    return halves
