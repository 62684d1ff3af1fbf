"""Charts for the andon board as SVG text, drawn on the server: pure functions, no library.

Every text that reaches the SVG (alert keys, rule names, fault texts from a PLC) is escaped here;
the page shows the SVG in an ``<img>``, where a script inside it would not run anyway.

* :func:`timeline` draws a machine's alerts of the last hours as bars on a time line, one row per
  alert, coloured by severity (IEC 60073: red critical, yellow warning, white/grey info, blue offline).
* :func:`bars` draws labelled horizontal bars.
* :func:`tool_life` and :func:`faults` draw a machine's usage history (the fields of
  :func:`agent.pipeline.usagereport.usage_report`, plain dicts): tool life achieved per tool rule,
  and faults by code, most frequent first.

Text that XML cannot hold (control characters a PLC may send) is dropped before escaping, so the
SVG always parses.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from agent.ops.board.history import Bar

FILL = {"critical": "#d32f2f", "warning": "#f9c80e", "info": "#c8c8c8", "offline": "#1e6fd9", "ok": "#2e7d32"}
TEXT = "#e8e8e8"
MUTED = "#8a8a8a"
FONT = "font-family=\"'Liberation Sans', Arial, Helvetica, sans-serif\""
NEUTRAL = "#7fa7c9"  # counts (faults by code): no alarm colour for a statistic
EARLY = 0.8  # a tool changed before this fraction of its life was changed early
MAX_CODES = 10  # fault codes drawn per machine (the most frequent); `andon-agent report` lists all
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def text(value: object) -> str:
    """Any text for an SVG (element content or attribute value): characters XML cannot hold are
    dropped, then ``& < > " '`` are escaped."""
    return escape(NOT_XML.sub("", str(value)))


def _x(t: float, t0: float, span: float, left: float, width: float) -> float:
    return left + (min(max(t, t0), t0 + span) - t0) / span * width


def timeline(
    bars: Sequence[Bar],
    now: float,
    *,
    hours: float = 24.0,
    width: int = 960,
    local: Callable[[float], time.struct_time] = time.localtime,
) -> str:
    """The alerts of the last ``hours`` up to ``now`` as an SVG time line (one row per alert key)."""
    span = hours * 3600.0
    t0 = now - span
    keys = sorted({b.key for b in bars if (b.end is None or b.end > t0) and b.start < now})
    left, right, top, row = 200.0, 12.0, 8.0, 26.0
    plot_w = width - left - right
    height = int(top + max(len(keys), 1) * row + 26)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" {FONT} font-size="14">',
        f"<title>alerts of the last {hours:g} h</title>",
    ]
    out += _hour_grid(t0, span, now, left, plot_w, top + max(len(keys), 1) * row, local)
    if not keys:
        out.append(
            f'<text x="{left + 8:.0f}" y="{top + 18:.0f}" fill="{MUTED}">no alerts in the last {hours:g} h</text>'
        )
    for i, key in enumerate(keys):
        y = top + i * row
        out.append(
            f'<text x="{left - 8:.0f}" y="{y + 18:.0f}" fill="{TEXT}" text-anchor="end">{text(_short(key))}</text>'
        )
        for b in bars:
            if b.key != key or b.start >= now or (b.end is not None and b.end <= t0):
                continue
            x1 = _x(b.start, t0, span, left, plot_w)
            x2 = _x(now if b.end is None else b.end, t0, span, left, plot_w)
            w = max(x2 - x1, 2.0)  # a blip of a second stays visible ...
            x1 = min(x1, left + plot_w - w)  # ... inside the plot
            title = f"{b.key}: {b.label}" if b.label else b.key
            out.append(
                f'<rect x="{x1:.1f}" y="{y + 4:.0f}" width="{w:.1f}" height="{row - 8:.0f}" rx="3" '
                f'fill="{FILL.get(b.colour, FILL["info"])}"><title>{text(title)}</title></rect>'
            )
    out.append("</svg>")
    return "\n".join(out)


def _short(key: str, limit: int = 24) -> str:
    """The rule part of an alert key (the machine is the row's owner), cut to fit the label column."""
    text = key.split("/", 1)[1] if "/" in key else key
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _hour_grid(
    t0: float,
    span: float,
    now: float,
    left: float,
    width: float,
    bottom: float,
    local: Callable[[float], time.struct_time],
) -> list[str]:
    """Vertical lines every few hours (local time of the gateway), labelled under the plot."""
    step = 3600.0 * (3 if span > 12 * 3600 else 1)
    lines: list[str] = []
    offset = local(now).tm_gmtoff
    first = math.ceil((t0 + offset) / step) * step - offset
    t = first
    while t <= now:
        x = _x(t, t0, span, left, width)
        lines.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{bottom:.0f}" stroke="#333" stroke-width="1"/>')
        lines.append(
            f'<text x="{x:.1f}" y="{bottom + 18:.0f}" fill="{MUTED}" text-anchor="middle">'
            f"{time.strftime('%H:%M', local(t))}</text>"
        )
        t += step
    return lines


@dataclass(frozen=True, slots=True)
class Item:
    """One bar of :func:`bars`: ``value`` sets its length, ``text`` is written after it."""

    label: str
    value: float
    text: str
    colour: str = "ok"


def bars(title: str, items: Sequence[Item], *, scale: float | None = None, width: int = 640) -> str:
    """Labelled horizontal bars, longest ``scale`` (default: the largest value) across the plot."""
    left, right, top, row = 210.0, 110.0, 30.0, 28.0
    plot_w = width - left - right
    top_value = scale if scale is not None else max((i.value for i in items), default=0.0)
    height = int(top + max(len(items), 1) * row + 8)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" {FONT} font-size="14">',
        f"<title>{text(title)}</title>",
        f'<text x="8" y="20" fill="{TEXT}" font-size="16" font-weight="bold">{text(title)}</text>',
    ]
    if not items:
        out.append(f'<text x="8" y="{top + 18:.0f}" fill="{MUTED}">nothing yet</text>')
    for i, item in enumerate(items):
        y = top + i * row
        w = 0.0 if top_value <= 0 else max(0.0, min(item.value / top_value, 1.0)) * plot_w
        label, words = text(item.label), text(item.text)
        short = text(_cut(item.label))
        out.append(f'<text x="{left - 8:.0f}" y="{y + 18:.0f}" fill="{TEXT}" text-anchor="end">{short}</text>')
        out.append(
            f'<rect x="{left:.0f}" y="{y + 4:.0f}" width="{max(w, 1.0):.1f}" height="{row - 8:.0f}" rx="3" '
            f'fill="{FILL.get(item.colour, FILL["info"])}"><title>{label}: {words}</title></rect>'
        )
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 18:.0f}" fill="{TEXT}">{words}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _cut(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" {FONT} font-size="14">',
        f"<title>{text(title)}</title>",
        f'<text x="8" y="20" fill="{TEXT}" font-size="16" font-weight="bold">{text(title)}</text>',
    ]


def _label(x: float, y: float, words: str, *, fill: str = TEXT, anchor: str = "start", size: int = 14) -> str:
    """A ``<text>`` element; ``words`` are escaped here."""
    extra = ("" if anchor == "start" else f' text-anchor="{anchor}"') + ("" if size == 14 else f' font-size="{size}"')
    return f'<text x="{x:.1f}" y="{y:.0f}" fill="{fill}"{extra}>{text(words)}</text>'


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def duration(seconds: float) -> str:
    """Seconds as the charts show them: "45 s", "12 min", "3.5 h", "4.2 d"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 4 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def tool_life(machine: str, tools: Mapping[str, Mapping[str, Any]], days: float, *, width: int = 640) -> str:
    """Tool life achieved per tool rule: a bar to the mean life fraction at the change (green, yellow
    below :data:`EARLY`), a white tick at the least, and the changes: how many, how many early
    (below :data:`EARLY`), how many without any warning before (in red).

    ``tools``: rule -> ``tool``, ``count``, ``mean_life_fraction``, ``min_life_fraction`` (None when
    no change had a known life), ``early``, ``unwarned``.
    """
    left, right, top, row = 190.0, 16.0, 34.0, 46.0
    plot_w = width - left - right
    height = int(top + max(len(tools), 1) * row + 22)
    out = _svg_open(width, height, f"{machine}: tool life achieved, last {days:g} days")
    if not tools:
        out.append(f'<text x="8" y="{top + 18:.0f}" fill="{MUTED}">no tool changes</text>')
    for i, (rule, t) in enumerate(tools.items()):
        y = top + i * row
        mean, least = t.get("mean_life_fraction"), t.get("min_life_fraction")
        name = t.get("tool") or rule
        label = name if name == rule else f"{name} ({rule})"
        out.append(_label(left - 8, y + 16, _cut(label), anchor="end"))
        out.append(f'<rect x="{left:.0f}" y="{y + 3:.0f}" width="{plot_w:.0f}" height="18" rx="3" fill="#2a2e33"/>')
        summary = f"mean {_percent(mean)}, least {_percent(least)}"
        if mean is not None:
            w = max(0.0, min(float(mean), 1.0)) * plot_w
            colour = FILL["ok"] if mean >= EARLY else FILL["warning"]
            out.append(
                f'<rect x="{left:.0f}" y="{y + 3:.0f}" width="{max(w, 1.0):.1f}" height="18" rx="3" fill="{colour}">'
                f"<title>{text(label)}: {text(summary)}</title></rect>"
            )
        if least is not None:
            x = left + max(0.0, min(float(least), 1.0)) * plot_w
            out.append(f'<rect x="{x - 1.5:.1f}" y="{y:.0f}" width="3" height="24" fill="{TEXT}"/>')
        out.append(_changes_line(left, y + 38, t))
        out.append(_label(left + plot_w, y + 38, summary, anchor="end", size=13))
    out += _fraction_axis(left, plot_w, top, top + max(len(tools), 1) * row)
    out.append("</svg>")
    return "\n".join(out)


def _changes_line(x: float, y: float, t: Mapping[str, Any]) -> str:
    """``12 changes, 3 early, 1 without warning`` (the last in red when there is one)."""
    count, early, unwarned = int(t.get("count", 0)), int(t.get("early", 0)), int(t.get("unwarned", 0))
    parts = [
        f'<tspan fill="{TEXT}">{count} change{"" if count == 1 else "s"}</tspan>',
        f'<tspan fill="{FILL["warning"] if early else MUTED}">, {early} early</tspan>',
        f'<tspan fill="{"#ff6b6b" if unwarned else MUTED}">, {unwarned} without warning</tspan>',
    ]
    return f'<text x="{x:.0f}" y="{y:.0f}" font-size="13">{"".join(parts)}</text>'


def _fraction_axis(left: float, width: float, top: float, bottom: float) -> list[str]:
    """Dashed lines at :data:`EARLY` and at the whole life, labelled under the plot."""
    out = []
    for f, label in ((EARLY, f"{EARLY:.0%}"), (1.0, "100% of life")):
        x = left + f * width
        out.append(
            f'<line x1="{x:.1f}" y1="{top - 4:.0f}" x2="{x:.1f}" y2="{bottom:.0f}" stroke="{MUTED}" '
            'stroke-width="1" stroke-dasharray="3 3"/>'
        )
        anchor = "end" if f >= 1.0 else "middle"
        out.append(_label(x, bottom + 16, label, fill=MUTED, anchor=anchor, size=12))
    return out


def faults(machine: str, codes: Mapping[str, Mapping[str, Any]], days: float, *, width: int = 640) -> str:
    """Faults by code, most frequent first (at most :data:`MAX_CODES`): a bar as long as the count,
    the count and the time active after it, the code's text under it.

    ``codes``: ``"<rule>/<code>"`` -> ``count``, ``active_seconds``, ``text`` (from the PLC or the
    config: escaped), in the order to draw.
    """
    left, right, top, row = 150.0, 150.0, 34.0, 44.0
    plot_w = width - left - right
    shown = list(codes.items())[:MAX_CODES]
    more = len(codes) - len(shown)
    height = int(top + max(len(shown), 1) * row + (22 if more else 4))
    out = _svg_open(width, height, f"{machine}: faults by code, last {days:g} days")
    if not shown:
        out.append(f'<text x="8" y="{top + 18:.0f}" fill="{MUTED}">no fault codes</text>')
    most = max((int(c.get("count", 0)) for _, c in shown), default=0)
    for i, (key, c) in enumerate(shown):
        y = top + i * row
        count, active, words = int(c.get("count", 0)), float(c.get("active_seconds", 0.0)), str(c.get("text") or "")
        w = 0.0 if most <= 0 else count / most * plot_w
        figures = f"{count}\u00d7, {duration(active)} active"
        out.append(_label(left - 8, y + 16, _cut(key, 18), anchor="end"))
        out.append(
            f'<rect x="{left:.0f}" y="{y + 3:.0f}" width="{max(w, 2.0):.1f}" height="18" rx="3" fill="{NEUTRAL}">'
            f"<title>{text(key)}: {text(figures)}{': ' if words else ''}{text(words)}</title></rect>"
        )
        out.append(_label(left + w + 6, y + 16, figures))
        out.append(_label(left, y + 37, _cut(words, 70), fill=MUTED, size=13))
    if more:
        y = top + len(shown) * row + 14
        out.append(_label(8, y, f"and {more} more (andon-agent report lists them all)", fill=MUTED, size=13))
    out.append("</svg>")
    return "\n".join(out)
