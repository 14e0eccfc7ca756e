"""Inline SVG charts (line and bar) with axes, units, labels and legends; no scripts, no assets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 760, 310
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 46, 48
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    values: Sequence[float | None]
    color: str = ""
    dashed: bool = False


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.3g}"


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 8}" '
        f'text-anchor="middle">{escape(x_label)}</text>',
        f'<text transform="translate(14 {TOP + (HEIGHT - TOP - BOTTOM) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]


def line_chart(
    title: str,
    x: Sequence[float],
    lines: Sequence[Line],
    *,
    x_label: str,
    y_label: str,
    log_y: bool = False,
) -> str:
    """A line chart; `None` values leave gaps. `log_y` plots on a base-10 logarithmic scale."""
    parts = _frame(title, x_label, y_label)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    ys = [v for ln in lines for v in ln.values if v is not None and (v > 0 or not log_y)]
    if not x or not ys:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text></svg>'
        )
        return "".join(parts)
    x_lo, x_hi = min(x), max(x) if max(x) > min(x) else min(x) + 1

    def tx(v: float) -> float:
        return LEFT + (v - x_lo) / (x_hi - x_lo) * plot_w

    if log_y:
        lo_exp = math.floor(math.log10(min(ys)))
        hi_exp = math.ceil(math.log10(max(ys)))
        hi_exp = max(hi_exp, lo_exp + 1)
        y_ticks = [10.0**e for e in range(lo_exp, hi_exp + 1)]

        def ty(v: float) -> float:
            frac = (math.log10(v) - lo_exp) / (hi_exp - lo_exp)
            return TOP + plot_h - frac * plot_h

    else:
        y_ticks = _nice_ticks(0.0, max(ys))
        y_top = y_ticks[-1] or 1.0

        def ty(v: float) -> float:
            return TOP + plot_h - v / y_top * plot_h

    for t in y_ticks:
        y = ty(t)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    for t in _nice_ticks(x_lo, x_hi, 8):
        if t < x_lo or t > x_hi:
            continue
        xx = tx(t)
        parts.append(
            f'<line x1="{xx:.1f}" y1="{TOP + plot_h}" x2="{xx:.1f}" y2="{TOP + plot_h + 4}" '
            f'stroke="#333"/><text x="{xx:.1f}" y="{TOP + plot_h + 16}" '
            f'text-anchor="middle">{_fmt(t)}</text>'
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>'
    )
    for i, ln in enumerate(lines):
        color = ln.color or PALETTE[i % len(PALETTE)]
        segments: list[list[str]] = [[]]
        for xv, yv in zip(x, ln.values, strict=False):
            if yv is None or (log_y and yv <= 0):
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append(f"{tx(xv):.1f},{ty(yv):.1f}")
        dash = ' stroke-dasharray="5 3"' if ln.dashed else ""
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif seg:
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} '
                    f'points="{" ".join(seg)}"/>'
                )
        lx = LEFT + 10 + i * 150
        parts.append(
            f'<rect x="{lx}" y="{TOP - 14}" width="12" height="3" fill="{color}"/>'
            f'<text x="{lx + 16}" y="{TOP - 9}">{escape(ln.name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    title: str, labels: Sequence[str], values: Sequence[float], *, x_label: str, y_label: str
) -> str:
    """Vertical bars, one per label (used for the latency histogram and error counts)."""
    parts = _frame(title, x_label, y_label)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    if not values or max(values) <= 0:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">none</text></svg>'
        )
        return "".join(parts)
    ticks = _nice_ticks(0.0, max(values))
    top = ticks[-1] or 1.0
    for t in ticks:
        y = TOP + plot_h - t / top * plot_h
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    n = len(values)
    bw = plot_w / n
    label_every = max(1, math.ceil(n / 12))
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = v / top * plot_h
        x = LEFT + i * bw
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: {v:g}</title></rect>'
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{TOP + plot_h + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>'
    )
    parts.append("</svg>")
    return "".join(parts)
