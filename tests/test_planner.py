"""Table and property tests of the Modbus read planner (drivers.modbus.planner)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.config import RegisterTable
from drivers.modbus.planner import (
    MAX_BITS,
    MAX_REGISTERS,
    ReadRequest,
    Span,
    excluded,
    plan_reads,
    split_request,
)

TABLES: tuple[RegisterTable, ...] = ("holding", "input", "coil", "discrete")


def H(address: int, count: int, key: str) -> Span:
    return Span("holding", address, count, key)


def R(table: RegisterTable, address: int, count: int, *keys: str) -> ReadRequest:
    return ReadRequest(table, address, count, keys)


def test_limits() -> None:
    assert MAX_REGISTERS == 125
    assert MAX_BITS == 2000


def test_empty() -> None:
    assert plan_reads([]) == []
    assert excluded([], []) == []


def test_single_span() -> None:
    assert plan_reads([H(100, 2, "a")]) == [R("holding", 100, 2, "a")]


def test_adjacent_spans_merge() -> None:
    spans = [H(100, 2, "a"), H(102, 1, "b"), H(103, 4, "c")]
    assert plan_reads(spans, max_gap=0) == [R("holding", 100, 7, "a", "b", "c")]


@pytest.mark.parametrize("gap", [1, 7, 8])
def test_gap_up_to_max_gap_is_bridged(gap: int) -> None:
    spans = [H(100, 1, "a"), H(101 + gap, 1, "b")]
    assert plan_reads(spans, max_gap=8) == [R("holding", 100, gap + 2, "a", "b")]


@pytest.mark.parametrize(("gap", "max_gap"), [(9, 8), (1, 0), (20, 8)])
def test_gap_beyond_max_gap_is_not_bridged(gap: int, max_gap: int) -> None:
    spans = [H(100, 1, "a"), H(101 + gap, 1, "b")]
    assert plan_reads(spans, max_gap=max_gap) == [R("holding", 100, 1, "a"), R("holding", 101 + gap, 1, "b")]


def test_register_limit_130_contiguous() -> None:
    spans = [H(a, 1, f"s{a}") for a in range(130)]
    plan = plan_reads(spans)
    assert [(r.address, r.count) for r in plan] == [(0, 125), (125, 5)]
    assert plan[0].keys == tuple(f"s{a}" for a in range(125))


def test_register_limit_respects_whole_spans() -> None:
    # 62 float32s = 124 registers; the 63rd would make 126, so it starts the next read
    spans = [H(2 * i, 2, f"f{i}") for i in range(63)]
    assert [(r.address, r.count) for r in plan_reads(spans)] == [(0, 124), (124, 2)]


def test_lower_register_limit() -> None:
    spans = [H(a, 1, f"s{a}") for a in range(10)]
    assert [(r.address, r.count) for r in plan_reads(spans, max_registers=4)] == [(0, 4), (4, 4), (8, 2)]


def test_bit_limit_2000() -> None:
    spans = [Span("coil", a, 1, f"c{a}") for a in range(2005)]
    plan = plan_reads(spans)
    assert [(r.table, r.address, r.count) for r in plan] == [("coil", 0, 2000), ("coil", 2000, 5)]


def test_bit_gap_is_max_gap_times_16() -> None:
    spans = [Span("discrete", 0, 1, "a"), Span("discrete", 1 + 16, 1, "b"), Span("discrete", 18 + 17, 1, "c")]
    # gap a..b = 16 bits (bridged with max_gap=1); gap b..c = 17 bits (not bridged)
    assert plan_reads(spans, max_gap=1) == [R("discrete", 0, 18, "a", "b"), R("discrete", 35, 1, "c")]
    unbridged = [R("discrete", a, 1, k) for a, k in ((0, "a"), (17, "b"), (35, "c"))]
    assert plan_reads(spans, max_gap=0) == unbridged


def test_tables_never_merge() -> None:
    spans = [Span(t, 0, 1, t) for t in reversed(TABLES)] + [Span("holding", 1, 1, "h1")]
    assert plan_reads(spans) == [
        R("holding", 0, 2, "holding", "h1"),
        R("input", 0, 1, "input"),
        R("coil", 0, 1, "coil"),
        R("discrete", 0, 1, "discrete"),
    ]


def test_bits_of_one_register_share_a_read() -> None:
    spans = [H(10, 1, "fault"), H(10, 1, "door_open"), H(10, 1, "estop"), H(11, 2, "count")]
    assert plan_reads(spans, max_gap=0) == [R("holding", 10, 3, "door_open", "estop", "fault", "count")]


def test_overlapping_spans_share_a_read() -> None:
    spans = [H(0, 4, "whole"), H(1, 2, "inner"), H(3, 3, "tail")]
    assert plan_reads(spans, max_gap=0) == [R("holding", 0, 6, "whole", "inner", "tail")]


def test_refused_address_in_a_gap_splits_the_run() -> None:
    spans = [H(100, 2, "a"), H(104, 2, "b"), H(106, 1, "c")]
    assert plan_reads(spans) == [R("holding", 100, 7, "a", "b", "c")]
    assert plan_reads(spans, refused=[("holding", 103)]) == [
        R("holding", 100, 2, "a"),
        R("holding", 104, 3, "b", "c"),
    ]
    assert excluded(spans, [("holding", 103)]) == []


def test_refused_address_of_another_table_changes_nothing() -> None:
    spans = [H(100, 2, "a"), H(104, 2, "b")]
    assert plan_reads(spans, refused=[("input", 103), ("coil", 101)]) == [R("holding", 100, 6, "a", "b")]


def test_span_covering_a_refused_address_is_excluded() -> None:
    spans = [H(100, 2, "a"), H(102, 2, "b"), H(104, 1, "c"), Span("coil", 103, 1, "k")]
    refused: list[tuple[RegisterTable, int]] = [("holding", 103)]
    assert plan_reads(spans, refused=refused) == [
        R("holding", 100, 2, "a"),
        R("holding", 104, 1, "c"),
        R("coil", 103, 1, "k"),
    ]
    assert excluded(spans, refused) == ["b"]


def test_excluded_is_ordered() -> None:
    spans = [Span("coil", 5, 1, "k"), H(7, 1, "z"), H(3, 2, "y"), Span("input", 0, 1, "i")]
    refused: list[tuple[RegisterTable, int]] = [("holding", 4), ("holding", 7), ("coil", 5), ("input", 0)]
    assert excluded(spans, refused) == ["y", "z", "i", "k"]
    assert plan_reads(spans, refused=refused) == []


def test_order_of_input_does_not_matter() -> None:
    spans = [H(5, 1, "b"), Span("coil", 3, 1, "k"), H(1, 1, "a"), Span("input", 9, 2, "i"), H(5, 1, "a2")]
    expected = [R("holding", 1, 5, "a", "a2", "b"), R("input", 9, 2, "i"), R("coil", 3, 1, "k")]
    assert plan_reads(spans) == expected
    assert plan_reads(reversed(spans)) == expected
    assert plan_reads(sorted(spans, key=lambda s: s.key)) == expected


@pytest.mark.parametrize(
    ("req", "text"),
    [
        (
            R("holding", 100, 10, "tool1_wear", "tool2_wear"),
            "holding 100..109 (10 registers: tool1_wear, tool2_wear)",
        ),
        (R("coil", 0, 16, "a", "b"), "coil 0..15 (16 bits: a, b)"),
        (R("input", 7, 1, "x"), "input 7..7 (1 register: x)"),
        (R("discrete", 3, 1, "d"), "discrete 3..3 (1 bit: d)"),
    ],
)
def test_read_request_str(req: ReadRequest, text: str) -> None:
    assert str(req) == text


@pytest.mark.parametrize(
    ("spans", "kwargs", "match"),
    [
        ([H(0, 126, "s")], {}, "longer than one read"),
        ([H(0, 11, "s")], {"max_registers": 10}, "longer than one read"),
        ([Span("coil", 0, 2001, "c")], {}, "longer than one read"),
        ([H(0, 1, "s"), H(5, 1, "s")], {}, "duplicate span key"),
        ([], {"max_gap": -1}, "max_gap"),
        ([], {"max_registers": 126}, "max_registers"),
        ([], {"max_bits": 0}, "max_bits"),
    ],
)
def test_plan_errors(spans: list[Span], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_reads(spans, **kwargs)


@pytest.mark.parametrize(("address", "count"), [(-1, 1), (0, 0), (65535, 2), (65536, 1)])
def test_span_must_fit_the_address_space(address: int, count: int) -> None:
    with pytest.raises(ValueError, match="span 'x'"):
        Span("holding", address, count, "x")


def test_span_at_the_top_of_the_address_space() -> None:
    assert plan_reads([H(65534, 2, "x")]) == [R("holding", 65534, 2, "x")]


# ---------------------------------------------------------------------------------------------
# split_request


def _by_key(spans: Sequence[Span]) -> dict[str, Span]:
    return {s.key: s for s in spans}


def test_split_at_the_middle_boundary() -> None:
    spans = [H(100, 2, "a"), H(104, 2, "b"), H(110, 1, "c"), H(111, 4, "d")]
    (req,) = plan_reads(spans)
    assert req == R("holding", 100, 15, "a", "b", "c", "d")
    assert split_request(req, _by_key(spans)) == [
        R("holding", 100, 6, "a", "b"),
        R("holding", 110, 5, "c", "d"),
    ]


def test_split_shrinks_to_the_spans_held() -> None:
    spans = [H(0, 1, "a"), H(8, 1, "b")]
    (req,) = plan_reads(spans)
    assert split_request(req, _by_key(spans)) == [R("holding", 0, 1, "a"), R("holding", 8, 1, "b")]


def test_split_keeps_a_shared_footprint_together() -> None:
    spans = [H(10, 1, "bit0"), H(10, 1, "bit1"), H(10, 1, "bit2"), H(11, 1, "n")]
    (req,) = plan_reads(spans)
    assert split_request(req, _by_key(spans)) == [
        R("holding", 10, 1, "bit0", "bit1", "bit2"),
        R("holding", 11, 1, "n"),
    ]


@pytest.mark.parametrize(
    "spans",
    [
        [H(5, 2, "a")],
        [H(10, 1, "bit0"), H(10, 1, "bit1")],
        [Span("coil", 3, 1, "k")],
    ],
)
def test_one_footprint_cannot_be_split(spans: list[Span]) -> None:
    (req,) = plan_reads(spans)
    assert split_request(req, _by_key(spans)) == []


def test_split_of_spans_overlapping_everywhere() -> None:
    # no address is free of a span, so the footprints are divided in address order
    spans = [H(0, 4, "a"), H(3, 4, "b"), H(6, 4, "c")]
    (req,) = plan_reads(spans)
    halves = split_request(req, _by_key(spans))
    assert halves == [R("holding", 0, 4, "a"), R("holding", 3, 7, "b", "c")]


def test_split_errors() -> None:
    spans = [H(0, 1, "a"), H(1, 1, "b")]
    (req,) = plan_reads(spans)
    with pytest.raises(ValueError, match="no span for key 'b'"):
        split_request(req, {"a": spans[0]})
    with pytest.raises(ValueError, match="not inside the request"):
        split_request(req, {"a": spans[0], "b": H(5, 1, "b")})


def test_bisection_isolates_refused_spans() -> None:
    """Drive the bisection as the driver does, against a device that refuses some addresses."""
    spans = [H(a, 1, f"s{a}") for a in range(0, 60, 3)] + [H(61, 2, "f")]
    device_refuses = {12, 62}
    by_key = _by_key(spans)
    refused: set[tuple[RegisterTable, int]] = set()
    pending = plan_reads(spans)
    reads = 0
    while pending:
        req = pending.pop()
        reads += 1
        if not any(req.address <= a < req.address + req.count for a in device_refuses):
            continue
        halves = split_request(req, by_key)
        if halves:
            pending += halves
        else:
            refused.update((req.table, a) for a in range(req.address, req.address + req.count))
    assert excluded(spans, refused) == ["s12", "f"]
    assert reads <= 2 * 2 * 5 + 1  # two refused spans, each found in about log2(21) splits
    plan = plan_reads(spans, refused=refused)
    planned = {k for r in plan for k in r.keys}
    assert planned == set(by_key) - {"s12", "f"}


# ---------------------------------------------------------------------------------------------
# Properties against a brute-force reference


def _feasible(group: Sequence[Span], limit: int, gap: int, refused: set[int]) -> bool:
    """Whether one read may carry exactly these spans (the rules of plan_reads, spelled out)."""
    lo = min(s.address for s in group)
    hi = max(s.address + s.count for s in group)
    if hi - lo > limit or any(lo <= a < hi for a in refused):
        return False
    used = {a for s in group for a in range(s.address, s.address + s.count)}
    run = 0
    for a in range(lo, hi):
        run = 0 if a in used else run + 1
        if run > gap:
            return False
    return True


def _fewest_reads(spans: Sequence[Span], limit: int, gap: int, refused: set[int]) -> int:
    """The minimum number of reads over every partition of the spans (DP over subsets)."""
    n = len(spans)
    full = (1 << n) - 1
    ok = [False] + [
        _feasible([spans[i] for i in range(n) if m >> i & 1], limit, gap, refused) for m in range(1, full + 1)
    ]
    best = [0] + [n + 1] * full
    for m in range(1, full + 1):
        low = m & -m  # the group of the lowest span, tried in every possible make-up
        sub = m
        while sub:
            if sub & low and ok[sub]:
                best[m] = min(best[m], best[m ^ sub] + 1)
            sub = (sub - 1) & m
    return best[full]


class Problem(NamedTuple):
    spans: list[Span]
    max_registers: int
    max_bits: int
    max_gap: int
    refused: list[tuple[RegisterTable, int]]

    def plan(self, spans: Iterable[Span] | None = None) -> list[ReadRequest]:
        return plan_reads(
            self.spans if spans is None else spans,
            max_gap=self.max_gap,
            refused=self.refused,
            max_registers=self.max_registers,
            max_bits=self.max_bits,
        )

    def limit_and_gap(self, table: RegisterTable) -> tuple[int, int]:
        if table in ("coil", "discrete"):
            return self.max_bits, self.max_gap * 16
        return self.max_registers, self.max_gap


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    max_registers = draw(st.integers(1, 12))
    max_bits = draw(st.integers(1, 12))
    spans: list[Span] = []
    for i in range(draw(st.integers(0, 7))):
        table = draw(st.sampled_from(TABLES))
        limit = max_bits if table in ("coil", "discrete") else max_registers
        spans.append(Span(table, draw(st.integers(0, 24)), draw(st.integers(1, limit)), f"s{i}"))
    refused = draw(st.lists(st.tuples(st.sampled_from(TABLES), st.integers(0, 30)), max_size=3))
    return Problem(spans, max_registers, max_bits, draw(st.integers(0, 3)), refused)


@settings(max_examples=300, deadline=None, database=None)
@given(problem=problems())
def test_plan_is_valid_and_minimal(problem: Problem) -> None:
    spans, refused = problem.spans, problem.refused
    plan = problem.plan()
    out = set(excluded(spans, refused))
    by_key = _by_key(spans)

    # deterministic order: by table, then address, whatever the order of the input
    assert plan == sorted(plan, key=lambda r: (TABLES.index(r.table), r.address))
    assert problem.plan(reversed(spans)) == plan

    for req in plan:
        limit, gap = problem.limit_and_gap(req.table)
        table_refused = {a for t, a in refused if t == req.table}
        assert 1 <= req.count <= limit
        assert not any(req.address <= a < req.address + req.count for a in table_refused)
        group = [by_key[k] for k in req.keys]
        assert all(s.table == req.table for s in group)
        assert req.address == min(s.address for s in group)
        assert req.address + req.count == max(s.address + s.count for s in group)
        assert _feasible(group, limit, gap, table_refused)

    # every span is in exactly one read, unless it covers a refused address
    carried = [k for req in plan for k in req.keys]
    assert sorted(carried) == sorted(set(by_key) - out)
    for key in out:
        s = by_key[key]
        assert any(t == s.table and s.address <= a < s.address + s.count for t, a in refused)

    # as few reads as any partition of the spans into reads allows, per table
    for table in TABLES:
        mine = [s for s in spans if s.table == table and s.key not in out]
        table_refused = {a for t, a in refused if t == table}
        fewest = _fewest_reads(mine, *problem.limit_and_gap(table), table_refused)
        assert sum(r.table == table for r in plan) == fewest


@settings(max_examples=150, deadline=None, database=None)
@given(problem=problems())
def test_split_halves_are_smaller_and_cover_the_request(problem: Problem) -> None:
    by_key = _by_key(problem.spans)
    for req in problem.plan():
        footprints = {(by_key[k].address, by_key[k].count) for k in req.keys}
        halves = split_request(req, by_key)
        if len(footprints) == 1:
            assert halves == []
            continue
        assert len(halves) == 2
        assert sorted(k for h in halves for k in h.keys) == sorted(req.keys)
        for half in halves:
            group = [by_key[k] for k in half.keys]
            assert half.table == req.table
            assert req.address <= half.address
            assert half.address + half.count <= req.address + req.count
            assert half.address == min(s.address for s in group)
            assert half.address + half.count == max(s.address + s.count for s in group)
            assert len({(s.address, s.count) for s in group}) < len(footprints)
