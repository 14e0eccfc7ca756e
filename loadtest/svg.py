"""Inline SVG charts (line and bar): axes with units, legends, tooltips; no scripts, no assets.

Every chart scales to the width of the page (`viewBox`, `width="100%"`) and keeps
its proportions. Line charts take one or two value axes (left, right) and draw
wider strokes first, so a narrower line on top of a wider one stays visible
where both have the same values: coinciding lines are told apart by width and
dash pattern, never by moving one of them. A transparent column over each x
value carries a `<title>` tooltip with every line's value there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from loadtest.svg_axes import LinearScale, Scale, fmt_tick, fmt_value, log_scale, x_ticks

WIDTH = 900
PLOT_HEIGHT = 230
LEFT, RIGHT, RIGHT_WITH_AXIS = 72, 24, 72
TITLE_HEIGHT, LEGEND_ROW, BOTTOM = 30, 18, 44
FONT_SIZE = 13
MARK_CHAR_WIDTH = 6.3  # about, at FONT_SIZE - 2
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass(frozen=True, slots=True)
class Axis:
    """A value axis: its label (with the unit) and the unit that follows values in tooltips."""

    label: str
    unit: str = ""
    log: bool = False


@dataclass(frozen=True, slots=True)
class Line:
    """One line: `None` values leave gaps; `dash` is an SVG dash array ("" = solid)."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    color: str
    width: float = 1.6
    dash: str = ""
    right: bool = False


@dataclass(frozen=True, slots=True)
class Mark:
    """A named instant, drawn as a thin vertical line (e.g. when the connections dropped)."""

    name: str
    at: float
    dash: str = ""
    labelled: bool = True


@dataclass(frozen=True, slots=True)
class LineChart:
    """A line chart over a shared x axis with a left and an optional right value axis."""

    title: str
    x_axis: Axis
    left: Axis
    lines: Sequence[Line]
    right: Axis | None = None
    x_domain: tuple[float, float] | None = None
    marks: Sequence[Mark] = ()
    x_hover: Callable[[float], str] | None = None


def _open(title: str, height: float) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" '
        'width="100%" preserveAspectRatio="xMidYMid meet" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" '
        f'font-size="{FONT_SIZE}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2}" y="19" text-anchor="middle" font-size="{FONT_SIZE + 2}" '
        f'font-weight="bold">{escape(title)}</text>',
    ]


def _legend_rows(names: Sequence[str], left: float, right: float) -> list[list[int]]:
    """Indices of the legend entries per row, flowing left to right within the plot's width."""
    rows: list[list[int]] = [[]]
    x = left
    for i, name in enumerate(names):
        w = _legend_entry_width(name)
        if rows[-1] and x + w > right:
            rows.append([])
            x = left
        rows[-1].append(i)
        x += w
    return rows


def _legend_entry_width(name: str) -> float:
    return 44 + 7.2 * len(name)


def _points(line: Line, sx: Scale, sy: Scale) -> list[list[tuple[float, float]]]:
    """The line's drawable points in plot coordinates, split where values are missing."""
    segments: list[list[tuple[float, float]]] = [[]]
    for xv, yv in zip(line.x, line.y, strict=False):
        if yv is None or not sy.accepts(yv):
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append((sx(xv), sy(yv)))
    return [s for s in segments if s]


def _stroke(line: Line) -> str:
    dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
    return f'stroke="{line.color}" stroke-width="{line.width:g}"{dash}'


def coinciding(lines: Sequence[Line]) -> list[list[str]]:
    """Groups of lines (by name) on the same axis with the same value at every x.

    Such lines are drawn on top of each other; the page says so under the chart.
    """
    groups: dict[tuple[bool, tuple[tuple[float, float | None], ...]], list[str]] = {}
    for ln in lines:
        points = tuple(
            (float(x), None if y is None else round(float(y), 9))
            for x, y in zip(ln.x, ln.y, strict=False)
        )
        if any(y is not None for _, y in points):
            groups.setdefault((ln.right, points), []).append(ln.name)
    return [names for names in groups.values() if len(names) > 1]


def line_chart(chart: LineChart) -> str:
    """The chart as one `<svg>` element."""
    right_margin = RIGHT_WITH_AXIS if chart.right else RIGHT
    plot_l, plot_r = LEFT, WIDTH - right_margin
    rows = _legend_rows([ln.name for ln in chart.lines], plot_l, plot_r)
    top = TITLE_HEIGHT + len(rows) * LEGEND_ROW + 8
    height = top + PLOT_HEIGHT + BOTTOM
    bottom = top + PLOT_HEIGHT
    parts = _open(chart.title, height)
    xs = [x for ln in chart.lines for x, y in zip(ln.x, ln.y, strict=False) if y is not None]
    if chart.x_domain is not None:
        x_lo, x_hi = chart.x_domain
    elif xs:
        x_lo, x_hi = min(xs), max(xs)
    else:
        x_lo, x_hi = 0.0, 1.0
    if x_hi <= x_lo:
        x_hi = x_lo + 1
    sx = LinearScale(x_lo, x_hi, plot_l, plot_r)
    left_sy = _y_scale(chart.left, [ln for ln in chart.lines if not ln.right], top, bottom)
    right_sy = (
        _y_scale(chart.right, [ln for ln in chart.lines if ln.right], top, bottom)
        if chart.right
        else None
    )
    parts += _y_axis(chart.left, left_sy, "left", plot_l, plot_r, top, bottom, grid=True)
    if chart.right and right_sy is not None:
        parts += _y_axis(chart.right, right_sy, "right", plot_l, plot_r, top, bottom, grid=False)
    parts += _x_axis(chart.x_axis, sx, x_lo, x_hi, plot_l, plot_r, bottom)
    parts.append(
        f'<rect x="{plot_l}" y="{top}" width="{plot_r - plot_l}" height="{PLOT_HEIGHT}" '
        'fill="none" stroke="#333"/>'
    )
    parts += _marks(chart.marks, sx, x_lo, x_hi, top, bottom)
    if not xs:
        parts.append(
            f'<text x="{(plot_l + plot_r) / 2}" y="{(top + bottom) / 2}" '
            'text-anchor="middle">no data</text>'
        )
    # Wider strokes first (stable): a narrower line drawn on top of a wider one stays visible.
    for ln in sorted(chart.lines, key=lambda ln: -ln.width):
        sy = right_sy if ln.right and right_sy is not None else left_sy
        parts.append(_draw_line(ln, sx, sy))
    parts += _legend(chart.lines, rows, plot_l)
    parts += _hover_columns(chart, sx, plot_l, plot_r, top)
    parts.append("</svg>")
    return "".join(parts)


def _y_scale(axis: Axis, lines: Sequence[Line], top: float, bottom: float) -> Scale:
    values = [y for ln in lines for y in ln.y if y is not None]
    if axis.log:
        return log_scale([v for v in values if v > 0], bottom, top)
    return LinearScale.from_zero(max(values, default=0.0), bottom, top)


def _y_axis(
    axis: Axis,
    sy: Scale,
    side: str,
    plot_l: float,
    plot_r: float,
    top: float,
    bottom: float,
    *,
    grid: bool,
) -> list[str]:
    x_edge = plot_l if side == "left" else plot_r
    anchor, dx = ("end", -6) if side == "left" else ("start", 6)
    out = [f'<g class="axis" data-side="{side}" data-label="{escape(axis.label)}">']
    for t in sy.ticks():
        y = sy(t)
        if grid:
            out.append(
                f'<line x1="{plot_l}" y1="{y:.1f}" x2="{plot_r}" y2="{y:.1f}" stroke="#ddd"/>'
            )
        out.append(
            f'<text x="{x_edge + dx}" y="{y + 4:.1f}" text-anchor="{anchor}">{fmt_tick(t)}</text>'
        )
    mid = (top + bottom) / 2
    if side == "left":
        label_at, angle = 16, -90
    else:
        label_at, angle = WIDTH - 12, 90
    out.append(
        f'<text transform="translate({label_at} {mid:.1f}) rotate({angle})" '
        f'text-anchor="middle">{escape(axis.label)}</text></g>'
    )
    return out


def _x_axis(
    axis: Axis, sx: Scale, lo: float, hi: float, plot_l: float, plot_r: float, bottom: float
) -> list[str]:
    out = [
        f'<g class="axis" data-side="bottom" data-label="{escape(axis.label)}" '
        f'data-domain="{lo:g} {hi:g}">'
    ]
    for t in x_ticks(lo, hi):
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle">{fmt_tick(t)}</text>'
        )
    out.append(
        f'<text x="{(plot_l + plot_r) / 2}" y="{bottom + 36}" '
        f'text-anchor="middle">{escape(axis.label)}</text></g>'
    )
    return out


def _marks(
    marks: Sequence[Mark], sx: Scale, lo: float, hi: float, top: float, bottom: float
) -> list[str]:
    """Thin vertical lines; labels move down a row rather than overlap the one before."""
    out: list[str] = []
    row_ends: list[float] = []
    for m in sorted(marks, key=lambda m: m.at):
        if not lo <= m.at <= hi:
            continue
        x = sx(m.at)
        dash = f' stroke-dasharray="{m.dash}"' if m.dash else ""
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#777"{dash}/>'
        )
        if not m.labelled:
            continue
        row = next((r for r, end in enumerate(row_ends) if x > end), len(row_ends))
        if row == len(row_ends):
            row_ends.append(0.0)
        row_ends[row] = x + 3 + MARK_CHAR_WIDTH * len(m.name) + 6
        out.append(
            f'<text x="{x + 3:.1f}" y="{top + 12 + row * (FONT_SIZE - 1):.0f}" '
            f'font-size="{FONT_SIZE - 2}" fill="#555">{escape(m.name)}</text>'
        )
    return out


def _draw_line(ln: Line, sx: Scale, sy: Scale) -> str:
    out = [f'<g class="series" data-name="{escape(ln.name)}">']
    for seg in _points(ln, sx, sy):
        if len(seg) == 1:
            (cx, cy) = seg[0]
            out.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{ln.width / 2 + 1.5:g}" '
                f'fill="{ln.color}"/>'
            )
        else:
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            out.append(
                f'<polyline fill="none" {_stroke(ln)} stroke-linejoin="round" points="{pts}"/>'
            )
    out.append("</g>")
    return "".join(out)


def _legend(lines: Sequence[Line], rows: list[list[int]], plot_l: float) -> list[str]:
    out = ['<g class="legend">']
    for r, row in enumerate(rows):
        y = TITLE_HEIGHT + r * LEGEND_ROW + 6
        x = plot_l
        for i in row:
            ln = lines[i]
            out.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 34:.1f}" y2="{y:.1f}" {_stroke(ln)}/>'
                f'<text x="{x + 40:.1f}" y="{y + 4.5:.1f}">{escape(ln.name)}</text>'
            )
            x += _legend_entry_width(ln.name)
    out.append("</g>")
    return out


def _hover_columns(
    chart: LineChart, sx: Scale, plot_l: float, plot_r: float, top: float
) -> list[str]:
    """One transparent column per x value; its tooltip lists every line's value there."""
    xs = sorted({float(x) for ln in chart.lines for x in ln.x if sx.lo <= x <= sx.hi})
    if not xs:
        return []
    by_line = [dict(zip(ln.x, ln.y, strict=False)) for ln in chart.lines]
    heading = chart.x_hover or (lambda v: f"{chart.x_axis.label}: {fmt_value(v)}")
    out = ['<g class="hover">']
    for i, x in enumerate(xs):
        x0 = plot_l if i == 0 else (sx(xs[i - 1]) + sx(x)) / 2
        x1 = plot_r if i == len(xs) - 1 else (sx(x) + sx(xs[i + 1])) / 2
        rows = [heading(x)]
        rows += [f"{m.name} at {fmt_value(m.at)} s" for m in chart.marks if x0 <= sx(m.at) < x1]
        for ln, values in zip(chart.lines, by_line, strict=True):
            if x in values:
                axis = chart.right if ln.right and chart.right else chart.left
                v = values[x]
                text = "—" if v is None else f"{fmt_value(v)} {axis.unit}".rstrip()
                rows.append(f"{ln.name}: {text}")
        out.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0.5):.1f}" '
            f'height="{PLOT_HEIGHT}" fill="#000" fill-opacity="0">'
            f"<title>{escape(chr(10).join(rows))}</title></rect>"
        )
    out.append("</g>")
    return out


def bar_chart(
    title: str, labels: Sequence[str], values: Sequence[float], *, x_label: str, y_label: str
) -> str:
    """Vertical bars, one per label (the latency histogram, error counts); tooltips per bar."""
    top = TITLE_HEIGHT + 8
    bottom = top + PLOT_HEIGHT
    height = bottom + BOTTOM
    plot_l, plot_r = LEFT, WIDTH - RIGHT
    parts = _open(title, height)
    parts += _x_label(x_label, plot_l, plot_r, bottom)
    if not values or max(values) <= 0:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{(top + bottom) / 2}" text-anchor="middle">none</text></svg>'
        )
        return "".join(parts)
    sy = LinearScale.from_zero(max(values), bottom, top)
    parts += _y_axis(Axis(y_label), sy, "left", plot_l, plot_r, top, bottom, grid=True)
    n = len(values)
    bw = (plot_r - plot_l) / n
    label_every = max(1, math.ceil(n / 12))
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = sy(v)
        x = plot_l + i * bw
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(bw - 1, 0.5):.1f}" '
            f'height="{bottom - y:.1f}" fill="{PALETTE[0]}">'
            f"<title>{escape(label)}: {fmt_value(v)}</title></rect>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{bottom + 17}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<rect x="{plot_l}" y="{top}" width="{plot_r - plot_l}" height="{PLOT_HEIGHT}" '
        'fill="none" stroke="#333"/></svg>'
    )
    return "".join(parts)


def _x_label(label: str, plot_l: float, plot_r: float, bottom: float) -> list[str]:
    return [
        f'<text x="{(plot_l + plot_r) / 2}" y="{bottom + 36}" '
        f'text-anchor="middle">{escape(label)}</text>'
    ]
