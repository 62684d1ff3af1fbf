"""Charts for the andon board as SVG text, drawn on the server: pure functions, no library.

Every text that reaches the SVG (alert keys, rule names, fault texts from a PLC) is escaped here;
the page shows the SVG in an ``<img>``, where a script inside it would not run anyway.

* :func:`timeline` draws a machine's alerts of the last hours as bars on a time line, one row per
  alert, coloured by severity (IEC 60073: red critical, yellow warning, white/grey info, blue offline).
* :func:`bars` draws labelled horizontal bars (tool life achieved, faults by code).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from agent.ops.board.history import Bar

FILL = {"critical": "#d32f2f", "warning": "#f9c80e", "info": "#c8c8c8", "offline": "#1e6fd9", "ok": "#2e7d32"}
TEXT = "#e8e8e8"
MUTED = "#8a8a8a"
FONT = "font-family=\"'Liberation Sans', Arial, Helvetica, sans-serif\""


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
            f'<text x="{left - 8:.0f}" y="{y + 18:.0f}" fill="{TEXT}" text-anchor="end">{escape(_short(key))}</text>'
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
                f'fill="{FILL.get(b.colour, FILL["info"])}"><title>{escape(title)}</title></rect>'
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
        f"<title>{escape(title)}</title>",
        f'<text x="8" y="20" fill="{TEXT}" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    if not items:
        out.append(f'<text x="8" y="{top + 18:.0f}" fill="{MUTED}">nothing yet</text>')
    for i, item in enumerate(items):
        y = top + i * row
        w = 0.0 if top_value <= 0 else max(0.0, min(item.value / top_value, 1.0)) * plot_w
        label, text = escape(item.label), escape(item.text)
        short = escape(_cut(item.label))
        out.append(f'<text x="{left - 8:.0f}" y="{y + 18:.0f}" fill="{TEXT}" text-anchor="end">{short}</text>')
        out.append(
            f'<rect x="{left:.0f}" y="{y + 4:.0f}" width="{max(w, 1.0):.1f}" height="{row - 8:.0f}" rx="3" '
            f'fill="{FILL.get(item.colour, FILL["info"])}"><title>{label}: {text}</title></rect>'
        )
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 18:.0f}" fill="{TEXT}">{escape(item.text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _cut(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
