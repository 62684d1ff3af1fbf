"""The board's usage charts: tool life achieved and faults by code per machine, as SVG drawn on the
gateway (pure, with tables), read from a real outbox file's usage history, and shown by the real
agent's board in headless Chromium, following a real tool change."""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, UsageSection
from agent.demo.receiver import Receiver
from agent.model import Severity, Transition, TransitionKind
from agent.ops.board.svg import MAX_CODES, faults, tool_life
from agent.pipeline.alertlog import AlertLog
from agent.pipeline.outbox import AsyncOutbox, Outbox
from agent.pipeline.usage import ToolChanged
from agent.pipeline.usagecharts import UsageCharts, change_counts, draw, read_usage
from agent.pipeline.usagelog import UsageLog
from drivers.modbus.sim import SimulatedMachine
from tests.board_helpers import Browser
from tests.conftest import machine_doc
from tests.waiting import Changes, running

HOSTILE = '<img src=x onerror="alert(1)"></text><script>alert(2)</script> & "quotes"'
H = 3600.0
PLOT = 640 - 190 - 16  # tool_life's plot width at the default width


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert not [e for e in root.iter() if e.tag.split("}")[-1] in ("script", "foreignObject", "a", "image")]
    return ["".join(e.itertext()) for e in root.iter() if e.tag.endswith(("}text", "}title"))]


def rects(svg: str) -> list[ET.Element]:
    return [e for e in ET.fromstring(svg).iter() if e.tag.endswith("rect")]


def tool(count: int, mean: float | None, least: float | None, early: int = 0, unwarned: int = 0, **kw: Any) -> Any:
    return {
        "tool": kw.get("name", "tool"),
        "count": count,
        "mean_life_fraction": mean,
        "min_life_fraction": least,
        "early": early,
        "unwarned": unwarned,
    }


# -- pure: the SVG ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "summary", "changes", "fill"),
    [
        (tool(12, 0.8712, 0.61, 3, 1), "mean 87%, least 61%", "12 changes, 3 early, 1 without warning", "#2e7d32"),
        (tool(2, 0.6, 0.55, 2, 0), "mean 60%, least 55%", "2 changes, 2 early, 0 without warning", "#f9c80e"),
        (tool(1, 1.3, 1.3), "mean 130%, least 130%", "1 change, 0 early, 0 without warning", "#2e7d32"),
        (tool(1, None, None, 0, 1), "mean -, least -", "1 change, 0 early, 1 without warning", None),
    ],
)
def test_tool_life_draws_mean_least_and_the_changes(
    t: dict[str, Any], summary: str, changes: str, fill: str | None
) -> None:
    svg = tool_life("press-1", {"punch": t | {"tool": "punch 3"}}, 30)
    words = texts(svg)
    assert "press-1: tool life achieved, last 30 days" in words
    assert {"punch 3 (punch)", summary, changes} <= set(words)
    bars = [r for r in rects(svg) if r.get("height") == "18" and r.get("fill") != "#2a2e33"]
    if fill is None:  # no known life: the track only, no bar and no tick
        assert bars == [] and len(rects(svg)) == 1
        return
    (bar,) = bars
    assert bar.get("fill") == fill
    mean = min(t["mean_life_fraction"], 1.0)  # over its life: the bar stops at 100 %
    assert float(bar.get("width", "0")) == pytest.approx(mean * PLOT, abs=0.1)
    (tick,) = [r for r in rects(svg) if r.get("width") == "3"]
    assert float(tick.get("x", "0")) + 1.5 == pytest.approx(190 + min(t["min_life_fraction"], 1.0) * PLOT, abs=0.1)


def test_tool_life_rows_in_order_escaped_and_empty() -> None:
    svg = tool_life("m<1>", {"a": tool(1, 0.9, 0.9, name=HOSTILE), "b": tool(3, 0.95, 0.9, name="b")}, 7, width=800)
    words = texts(svg)
    assert "m<1>: tool life achieved, last 7 days" in words
    assert HOSTILE in " ".join(words)  # the whole name survives as text (in the bar's tooltip) ...
    assert "<script" not in svg and "<img" not in svg  # ... and never as markup
    assert words.index("b") > min(i for i, w in enumerate(words) if w.startswith("<img"))  # rows in the given order
    assert ET.fromstring(svg).get("width") == "800"
    assert "no tool changes" in texts(tool_life("m1", {}, 30))


def test_faults_most_frequent_first_with_count_time_and_text() -> None:
    codes = {
        "code/12": {"rule": "code", "code": 12, "count": 8, "active_seconds": 2 * H, "text": "Spindle overload"},
        "code/31": {"rule": "code", "code": 31, "count": 2, "active_seconds": 90.0, "text": HOSTILE + "\x00\x1b"},
        "code/47": {"rule": "code", "code": 47, "count": 1, "active_seconds": 5.0, "text": ""},
    }
    svg = faults("press-1", codes, 30)
    words = texts(svg)  # a PLC's control characters are dropped: the SVG still parses
    assert words[:2] == ["press-1: faults by code, last 30 days"] * 2
    assert [w for w in words if w.startswith("code/") and ":" not in w] == ["code/12", "code/31", "code/47"]
    assert {"8\u00d7, 2.0 h active", "2\u00d7, 2 min active", "1\u00d7, 5 s active", "Spindle overload"} <= set(words)
    assert f"code/31: 2\u00d7, 2 min active: {HOSTILE}" in words and "<script" not in svg
    widths = [float(r.get("width", "0")) for r in rects(svg)]
    assert widths[0] == pytest.approx(640 - 150 - 150) and widths[0] == pytest.approx(4 * widths[1])
    assert widths[2] == pytest.approx(widths[0] / 8)
    assert "no fault codes" in texts(faults("press-1", {}, 30))


def test_faults_draws_the_most_frequent_and_says_how_many_more() -> None:
    codes = {f"code/{n}": {"count": 20 - n, "active_seconds": 1.0, "text": f"fault {n}"} for n in range(MAX_CODES + 2)}
    svg = faults("m1", codes, 30)
    assert len(rects(svg)) == MAX_CODES
    assert "code/11" not in texts(svg) and "and 2 more (andon-agent report lists them all)" in texts(svg)


def test_change_counts_and_draw() -> None:
    changes: list[dict[str, Any]] = [
        {"rule": "punch", "life_fraction": 0.95, "warned_seconds": 600.0},
        {"rule": "punch", "life_fraction": 0.5, "warned_seconds": None},  # early and without warning
        {"rule": "punch", "life_fraction": 0.79, "warned_seconds": 10.0},
        {"rule": "drill", "life_fraction": None, "warned_seconds": None},  # life unknown: not early
    ]
    assert change_counts(changes) == {"punch": {"early": 2, "unwarned": 1}, "drill": {"early": 0, "unwarned": 1}}
    m: dict[str, Any] = {"tool_changes": {}, "codes": {}}
    assert list(draw({"b": m, "a": m, "gone": m}, ["a", "b", "c"], 30)) == [
        "tool-life-a",
        "faults-a",
        "tool-life-b",
        "faults-b",
    ]  # the config's machines in its order, only those with history


# -- a real outbox file ------------------------------------------------------------------------------


def tr(change: TransitionKind, rule: str, t: float, **extra: Any) -> Transition:
    return Transition("m1", rule, None, change, Severity.WARNING, 1, None, f"{rule} {change.value}", t, extra)


async def seed_history(db_path: Path, now: float) -> None:
    """Three days of m1 as the agent commits them: a fault code with a hostile text (twice), one
    other code, a punch changed at 95 % after a warning and one changed at 50 % without any."""
    t0 = now - 3 * 86400
    machines = {"m1": {"punch": "strokes", "wear": "wear"}}
    async with AsyncOutbox(Outbox(db_path)) as ob:
        log = AlertLog(ob, gateway="gw-test", site=None, usage=UsageLog(UsageSection(), machines))
        await log.load()
        await log.commit_usage(lambda u: u.seen(t0, []))
        for n, code, text in ((0, 12, HOSTILE), (1, 12, HOSTILE), (2, 31, "Coolant low")):
            start = t0 + (n + 1) * H
            await log.commit([tr(TransitionKind.RAISED, "code", start, kind="code", code=code, code_text=text)])
            await log.commit([tr(TransitionKind.CLEARED, "code", start + 600, kind="code", code=0)])
        await log.commit([tr(TransitionKind.RAISED, "punch", t0 + 5 * H)])
        await log.commit(
            [tr(TransitionKind.CLEARED, "punch", t0 + 6 * H)],
            tools=[("m1", ToolChanged(t0 + 6 * H, "punch", "punch 3", 950.0, 1000.0))],
        )
        await log.commit([], tools=[("m1", ToolChanged(t0 + 30 * H, "punch", "punch 3", 500.0, 1000.0))])
        await log.commit_usage(lambda u: u.seen(now - 60, []))


async def test_read_usage_and_the_charts_kept_from_a_real_outbox_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    now = time.time()
    await seed_history(db, now)
    report = read_usage(db, now - 30 * 86400)
    punch = report["m1"]["tool_changes"]["punch"]
    assert punch == {
        "tool": "punch 3",
        "count": 2,
        "mean_life_fraction": 0.725,
        "min_life_fraction": 0.5,
        "early": 1,
        "unwarned": 1,
    }
    assert [(k, c["count"]) for k, c in report["m1"]["codes"].items()] == [("code/12", 2), ("code/31", 1)]
    charts = UsageCharts(db, lambda: ["m1", "m2"])
    assert await charts.refresh() and charts.version == 1
    assert charts.names() == ["tool-life-m1", "faults-m1"]
    assert "2 changes, 1 early, 1 without warning" in texts(charts.get("tool-life-m1") or "")
    assert HOSTILE in " ".join(texts(charts.get("faults-m1") or ""))  # whole in the tooltip
    assert not await charts.refresh() and charts.version == 1  # nothing new: the board is not told
    missing = UsageCharts(tmp_path / "none.db", lambda: ["m1"])
    with caplog.at_level(logging.DEBUG, "andon.board"):
        assert not await missing.refresh() and not await missing.refresh()
    assert missing.names() == [] and missing.reads == 2
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1  # said once


# -- the real agent's board in Chromium ----------------------------------------------------------------

SIGNALS = [
    {"id": "fault_code", "register": "holding", "address": 20, "type": "uint16"},
    {"id": "strokes", "register": "holding", "address": 21, "type": "uint16", "unit": "strokes"},
    {"id": "wear", "register": "holding", "address": 22, "type": "uint16", "scale": 0.1, "unit": "%"},
]
RULES = [
    {"id": "code", "machine": "m1", "signal": "fault_code", "kind": "code", "codes": {"31": {"message": "Coolant"}}},
    {"id": "punch", "machine": "m1", "signal": "strokes", "kind": "tool_life", "name": "punch 3", "limit": 1000},
    {"id": "wear", "machine": "m1", "signal": "wear", "kind": "forecast", "limit": 95, "horizon": "30m"},
]

CHART = "return document.querySelector('[data-chart=\"' + a0 + '\"] img')"
LOADED = CHART + " && document.querySelector('[data-chart=\"' + a0 + '\"] img').naturalWidth > 0"


async def svg_in_page(browser: Browser, name: str) -> str:
    """The chart's SVG as the page loaded it, parsed by the browser as SVG: no error, no script."""
    found: list[Any] = await browser.js(
        """
        const img = document.querySelector(`[data-chart="${arguments[0]}"] img`);
        return fetch(img.src).then(r => r.text()).then(text => {
            const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
            return [text, doc.querySelectorAll('parsererror, script, foreignObject').length, img.src];
        });
        """,
        name,
    )
    text, bad, _ = found
    assert bad == 0
    return str(text)


async def test_the_board_shows_the_usage_charts_and_follows_a_tool_change(
    browser: Browser, machine: SimulatedMachine, receiver: Receiver, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(
        machine.port,
        receiver.url,
        machines=[machine_doc("m1", machine.port, SIGNALS)],
        rules=RULES,
        status={"listen": "127.0.0.1:0"},
    )
    await seed_history(cfg.agent.state_dir / "outbox.db", time.time())
    await machine.set("holding", 21, [900])  # the punch is at 900 strokes when the agent starts
    changes, reads = Changes(), {"m1": 0}
    async with running(cfg, changes, reads) as agent:
        await browser.open(f"http://127.0.0.1:{agent.status_port}/")
        for name in ("tool-life-m1", "faults-m1"):
            await browser.until(LOADED, name)
        assert await browser.js("return document.getElementById('usage').hidden") is False
        tools = texts(await svg_in_page(browser, "tool-life-m1"))
        assert {"punch 3 (punch)", "mean 72%, least 50%", "2 changes, 1 early, 1 without warning"} <= set(tools)
        faults_svg = await svg_in_page(browser, "faults-m1")
        assert "<script>" not in faults_svg and HOSTILE in " ".join(texts(faults_svg))
        assert [w for w in texts(faults_svg) if w.startswith("code/") and ":" not in w] == ["code/12", "code/31"]
        before = await browser.js(CHART.replace("a0", "arguments[0]") + ".src", "tool-life-m1")
        seen = reads["m1"]
        await changes.until(lambda: reads["m1"] >= seen + 2)  # a whole poll read 900
        await machine.set("holding", 21, [3])  # the punch is changed at 90 % of its life, no warning
        await browser.until(CHART + ".src !== a1", "tool-life-m1", before, within=10)
        await browser.until(LOADED, "tool-life-m1")
        tools = texts(await svg_in_page(browser, "tool-life-m1"))
        assert "3 changes, 1 early, 2 without warning" in tools and "mean 78%, least 50%" in tools
        assert agent.surface.charts is not None and agent.surface.charts.reads <= 3  # at start, after the change
        await browser.open("about:blank")
