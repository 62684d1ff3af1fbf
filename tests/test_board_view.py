"""The board's pure parts: machine states, the board's data, the 24-hour history, the SVG charts,
and the acknowledgement API's checks (origin, token, body), with tables."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from agent.model import Severity, Transition, TransitionKind
from agent.ops.board.history import AlertHistory, Bar
from agent.ops.board.svg import Item, bars, timeline
from agent.ops.board.view import LightInfo, MachineInfo, board_view, machine_state, split_key
from agent.ops.board.web import MAX_BY, MAX_NOTE, bearer_ok, board_message, cross_site, parse_ack
from agent.pipeline.alertlog import ActiveAlert

C, W, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO
T0 = 1_700_000_000.0
HOSTILE = '<img src=x onerror="alert(1)"></script><script>alert(2)</script> & "quotes"'


def act(key: str, severity: Severity = W, since: float = T0, **kw: Any) -> ActiveAlert:
    return ActiveAlert(key, severity, None, f"{key} message", since, **kw)


@pytest.mark.parametrize(
    ("alerts", "state"),
    [
        ([], "ok"),
        ([act("p/wear", INFO)], "info"),
        ([act("p/wear", INFO), act("p/fault", W)], "warning"),
        ([act("p/wear", W), act("p/fault", C)], "critical"),
        ([act("p/fault", C), act("p/offline", W)], "offline"),  # unreachable: its other alerts are stale
        ([act("p/offline", INFO)], "offline"),
        ([act("p/alarms/offline", W)], "warning"),  # an OPC UA condition called "offline" is an alarm
    ],
)
def test_machine_state_is_offline_or_its_worst_alert(alerts: list[ActiveAlert], state: str) -> None:
    assert machine_state(alerts) == state


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        ("press-1/wear", ("press-1", "wear", None)),
        ("mill-2/alarms/Spindle.Overheat", ("mill-2", "alarms", "Spindle.Overheat")),
        ("m/r/a/b", ("m", "r", "a/b")),
    ],
)
def test_split_key(key: str, parts: tuple[str, str, str | None]) -> None:
    assert split_key(key) == parts


def test_board_lists_every_machine_in_order_and_alerts_worst_then_oldest() -> None:
    machines = [MachineInfo("p2", "modbus", True, T0 + 5), MachineInfo("p1", "opcua", False, None)]
    alerts = [
        act("p1/wear", W, T0 + 10),
        act("p1/fault", C, T0 + 20),
        act("p1/early", W, T0 + 1),
        act("p1/alarms/Door", C, T0 + 30, ack_by="Ana", ack_at=T0 + 40, ack_note=None),
        act("ghost/x", INFO),  # a machine no longer listed: still shown
    ]
    view = board_view(
        gateway="gw",
        site=None,
        machines=machines,
        alerts=alerts,
        ack=True,
        lights=[LightInfo("t1", "red+buzzer", True)],
        charts=["tool-life"],
    )
    assert [m["id"] for m in view["machines"]] == ["p2", "p1", "ghost"]
    p2, p1, ghost = view["machines"]
    assert (p2["state"], p2["alerts"], p2["connected"], p2["last_good"]) == ("ok", [], True, (T0 + 5) * 1000)
    assert p1["state"] == "critical" and ghost["state"] == "info"
    assert [a["alert"] for a in p1["alerts"]] == ["p1/fault", "p1/alarms/Door", "p1/early", "p1/wear"]
    door = p1["alerts"][1]
    assert door == {
        "alert": "p1/alarms/Door",
        "machine": "p1",
        "rule": "alarms",
        "condition": "Door",
        "severity": "critical",
        "offline": False,
        "message": "p1/alarms/Door message",
        "since": (T0 + 30) * 1000,
        "ack": {"by": "Ana", "at": (T0 + 40) * 1000, "note": None},
    }
    assert view["ack"] is True and view["gateway"] == "gw" and view["charts"] == ["tool-life"]
    assert view["lights"] == [{"id": "t1", "shows": "red+buzzer", "up": True, "error": None}]


def test_board_message_carries_the_gateway_clock() -> None:
    assert board_message(b'{"machines":[]}', 12.5) == b'event: board\ndata: {"now":12500,"board":{"machines":[]}}\n\n'


# -- history --------------------------------------------------------------------------------------


def tr(key: str, kind: TransitionKind, severity: Severity, at: float, message: str = "m") -> Transition:
    machine, rule = key.split("/", 1)
    return Transition(machine, rule, None, kind, severity, None, None, message, at)


R, U, X = TransitionKind.RAISED, TransitionKind.UPDATED, TransitionKind.CLEARED


def test_history_keeps_stretches_and_starts_a_new_one_when_the_severity_changes() -> None:
    h = AlertHistory()
    h.seed([act("p1/old", C, T0 - 100)])  # active since before the start
    for t in (
        tr("p1/wear", R, W, T0),
        tr("p1/wear", U, W, T0 + 5, "new text"),  # same severity: the same stretch
        tr("p1/wear", U, C, T0 + 10),
        tr("p1/wear", X, C, T0 + 20),
        tr("p1/offline", R, W, T0 + 30),
        tr("p2/fault", R, C, T0 + 1),
        tr("p1/never", X, W, T0 + 2),  # a clear of an unknown stretch changes nothing
    ):
        h.observe(t)
    assert h.bars("p1", T0 + 40) == [
        Bar("p1/wear", "warning", T0, T0 + 10, "new text"),
        Bar("p1/wear", "critical", T0 + 10, T0 + 20, "m"),
        Bar("p1/old", "critical", T0 - 100, None, "p1/old message"),
        Bar("p1/offline", "offline", T0 + 30, None, "m"),
    ]
    assert h.bars("p2", T0 + 40) == [Bar("p2/fault", "critical", T0 + 1, None, "m")]
    assert h.bars("p9", T0) == []


def test_history_forgets_what_ended_a_day_ago_and_is_bounded() -> None:
    h = AlertHistory(keep=100.0, max_bars=3)
    for n in range(5):
        h.observe(tr("p1/f", R, C, T0 + 10 * n))
        h.observe(tr("p1/f", X, C, T0 + 10 * n + 5))
    assert [b.start for b in h.bars("p1", T0 + 60)] == [T0 + 20, T0 + 30, T0 + 40]  # at most 3
    assert [b.start for b in h.bars("p1", T0 + 140)] == [T0 + 40]  # ended more than 100 s ago: gone


# -- SVG --------------------------------------------------------------------------------------------


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    return ["".join(e.itertext()) for e in root.iter() if e.tag.endswith(("text", "title"))]


def test_timeline_draws_bars_inside_the_plot_and_escapes_every_text() -> None:
    now = T0 + 86400
    svg = timeline(
        [
            Bar("p1/wear", "warning", now - 3600, now - 1800, HOSTILE),
            Bar("p1/fault", "critical", now - 100, None, "fault"),
            Bar("p1/gone", "info", now - 90000, now - 87000, "before the window"),
        ],
        now,
        width=1000,
        local=time.gmtime,
    )
    assert "<script" not in svg and "<img" not in svg
    assert f"p1/wear: {HOSTILE}" in texts(svg)  # the hostile text survives as text
    root = ET.fromstring(svg)
    rects = [r for r in root.iter() if r.tag.endswith("rect")]
    assert len(rects) == 2  # the stretch that ended before the window is not drawn
    plot_left, plot_right = 200.0, 1000 - 12.0
    for r in rects:
        x, w = float(r.get("x", "0")), float(r.get("width", "0"))
        assert plot_left <= x and x + w <= plot_right + 0.1
    fault, wear = rects  # one row per alert, in key order
    assert float(wear.get("width", "0")) == pytest.approx((plot_right - plot_left) * 1800 / 86400, abs=0.2)
    assert float(fault.get("x", "0")) + float(fault.get("width", "0")) == pytest.approx(plot_right, abs=0.1)
    assert {"wear", "fault"} <= set(texts(svg))
    assert "00:00" in texts(timeline([], now, local=time.gmtime))  # hour labels in the gateway's time


def test_bars_scale_to_the_largest_value_or_the_given_scale() -> None:
    svg = bars("Faults <by> code", [Item("12 Spindle overload", 8, "8 x"), Item(HOSTILE, 2, "2 x", "warning")])
    assert "Faults <by> code" in texts(svg) and "<script" not in svg and "<img" not in svg
    widths = [float(r.get("width", "0")) for r in ET.fromstring(svg).iter() if r.tag.endswith("rect")]
    assert widths[0] == pytest.approx(4 * widths[1])
    capped = bars("Tool life", [Item("tool 1", 1.4, "140 %")], scale=1.0, width=640)
    (w,) = [float(r.get("width", "0")) for r in ET.fromstring(capped).iter() if r.tag.endswith("rect")]
    assert w == pytest.approx(640 - 210 - 110)
    assert "nothing yet" in texts(bars("Empty", []))


# -- the acknowledgement API's checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # curl on the gateway: not a browser acting for another site
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://gw:9108"}, False),
        ({"Sec-Fetch-Site": "none"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),  # another port or subdomain is another site's page
        ({"Origin": "http://evil.example"}, True),
        ({"Origin": "http://gw:9109"}, True),
        ({"Origin": "null"}, True),
        ({"Origin": "http://GW:9108"}, False),
    ],
)
def test_cross_site_requests_are_refused(headers: dict[str, str], refused: bool) -> None:
    assert (cross_site(headers, "gw:9108") is not None) is refused


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer  s3cret ", True),
        ("Bearer s3cret2", False),
        ("Bearer ", False),
        ("Basic s3cret", False),
        ("s3cret", False),
        (None, False),
    ],
)
def test_bearer_token_check(header: str | None, ok: bool) -> None:
    assert bearer_ok(header, "s3cret") is ok


@pytest.mark.parametrize(
    ("body", "result"),
    [
        (b'{"by": "Ana"}', ("Ana", None)),
        (b'{"by": " Ana ", "note": "  new tool  "}', ("Ana", "new tool")),
        (b'{"by": "Ana", "note": null}', ("Ana", None)),
        (b'{"by": "Ana", "note": ""}', ("Ana", None)),
        (b"not json", "not JSON"),
        (b"[1]", "must be a JSON object"),
        (b"{}", '"by" must name who'),
        (b'{"by": "  "}', '"by" must name who'),
        (b'{"by": 3}', '"by" must name who'),
        (b'{"by": "Ana", "note": 5}', '"note" must be text'),
        (b'{"by": "Ana", "when": "now"}', "unknown key 'when'"),
        (('{"by": "' + "a" * (MAX_BY + 1) + '"}').encode(), "longer than"),
        (('{"by": "Ana", "note": "' + "n" * (MAX_NOTE + 1) + '"}').encode(), "longer than"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_parse_ack(body: bytes, result: tuple[str, str | None] | str) -> None:
    if isinstance(result, tuple):
        assert parse_ack(body) == result
    else:
        with pytest.raises(ValueError, match=result):
            parse_ack(body)
