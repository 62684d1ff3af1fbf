"""The demo's story is a pure function of its clock: tables of what happens when."""

from __future__ import annotations

import itertools

import pytest

from agent.demo.story import PERIOD, Scene, acts_between, scene


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0.0, Scene(62.0, False, False, False, 0)),
        (12.0, Scene(62.0 + 36 * 12 / 62, True, False, False, 0)),
        (17.9, Scene(62.0 + 36 * 17.9 / 62, True, False, False, 0)),
        (18.0, Scene(62.0 + 36 * 18 / 62, False, False, False, 0)),
        (61.9, Scene(62.0 + 36 * 61.9 / 62, False, False, False, 0)),
        (62.0, Scene(1.0, False, False, False, 1)),  # the tool change
        (70.0, Scene(1.0 + 61 * 8 / 58, False, True, False, 1)),
        (76.0, Scene(1.0 + 61 * 14 / 58, True, True, False, 1)),  # a fault while the network is down
        (90.0, Scene(1.0 + 61 * 28 / 58, False, False, False, 1)),
        (100.0, Scene(1.0 + 61 * 38 / 58, False, False, True, 1)),
        (113.0, Scene(1.0 + 61 * 51 / 58, False, False, False, 1)),
        (PERIOD, Scene(62.0, False, False, False, 1)),  # again from the top, the new tool worn to 62 %
        (PERIOD + 62.0, Scene(1.0, False, False, False, 2)),
        (-5.0, Scene(62.0, False, False, False, 0)),
    ],
)
def test_scene(t: float, expected: Scene) -> None:
    got = scene(t)
    assert got.wear == pytest.approx(expected.wear)
    assert (got.fault, got.network_down, got.unplugged, got.tool_changes) == (
        expected.fault,
        expected.network_down,
        expected.unplugged,
        expected.tool_changes,
    )


def test_wear_rises_steadily_to_the_change_and_the_forecast_has_room() -> None:
    wears = [scene(t / 10).wear for t in range(0, 620)]
    assert all(b > a for a, b in itertools.pairwise(wears))
    assert wears[0] < 80 < wears[-1] and 95 < wears[-1] < 100  # warning, then critical, before the change
    t80 = next(t for t in range(620) if scene(t / 10).wear >= 80) / 10
    t95 = next(t for t in range(620) if scene(t / 10).wear >= 95) / 10
    assert 25 < t80 < 35 and 50 < t95 < 60  # the forecast (window 10 s) can warn some 40 s before 95 %


def test_acts_are_told_once_each_in_order() -> None:
    told = acts_between(-1, 0.5)
    assert told == [
        "tool 1 of press-1 wears out: the forecast warns long before the limit, then the threshold escalates"
    ]
    whole = [a for t in range(0, 240) for a in acts_between(t - 1 if t else -1, t)]
    assert len(whole) == 14 and whole[:7] == whole[7:]
    assert whole[3].startswith("the network to the upstream is cut for 20 s")
    assert acts_between(0.0, 11.9) == []
