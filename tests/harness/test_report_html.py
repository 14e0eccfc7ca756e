"""`report.html` built from synthetic runs (relay + baseline) merged by `loadtest.results`.

The page is parsed with `html.parser` (tests/harness/html_tree.py); the checks read
its structure: which lines share an `<svg>`, their dash arrays and widths, the axes'
domains and labels, the workload table, and how the charts size themselves.
"""

from __future__ import annotations

import dataclasses

import pytest

from loadtest import html
from loadtest.figures import MaxThroughput, Step, Thresholds
from loadtest.report import Report
from loadtest.svg import Line, coinciding
from loadtest.workload import SCENARIO_OPTIONS, Scenario, Workload

from .html_tree import Node, parse
from .synthetic import DURATION, WALL, build

TIME_CHARTS = (
    "Messages per second",
    "Delivery latency percentiles (scheduled send → delivery)",
    "Connections",
    "Errors per second",
    "Server memory and CPU",
)


def _page(rep: Report) -> Node:
    return parse(html.render(rep))


def _chart(page: Node, title: str) -> Node:
    matches = [svg for svg in page.iter("svg") if svg.attrs.get("aria-label") == title]
    assert len(matches) == 1, [svg.attrs.get("aria-label") for svg in page.iter("svg")]
    return matches[0]


def _series(svg: Node) -> dict[str, Node]:
    """The polyline of each line of a chart, by its legend name (one segment, no gaps)."""
    out = {}
    for g in svg.find_all("g", **{"class": "series"}):
        polylines = g.find_all("polyline")
        assert len(polylines) == 1, g.attrs
        out[g.attrs["data-name"]] = polylines[0]
    return out


def test_every_time_chart_draws_relay_and_baseline_on_the_same_axes() -> None:
    page = _page(build())
    for title in TIME_CHARTS:
        lines = _series(_chart(page, title))
        relay = {n.removeprefix("relay ") for n in lines if n.startswith("relay ")}
        baseline = {n.removeprefix("baseline ") for n in lines if n.startswith("baseline ")}
        assert relay and relay == baseline, (title, sorted(lines))
        for metric in relay:
            solid, dashed = lines[f"relay {metric}"], lines[f"baseline {metric}"]
            assert "stroke-dasharray" not in solid.attrs, (title, metric)
            assert dashed.attrs["stroke-dasharray"], (title, metric)
            assert solid.attrs["stroke"] == dashed.attrs["stroke"], (title, metric)
        colours = {lines[f"relay {m}"].attrs["stroke"] for m in relay}
        assert len(colours) == len(relay), f"{title}: one colour per metric"


def test_coinciding_lines_differ_in_dash_and_width_but_not_in_position() -> None:
    svg = _chart(_page(build()), "Messages per second")
    lines = _series(svg)
    names = [f"{run} {m}" for m in ("sent", "ok", "delivered") for run in ("relay", "baseline")]
    assert sorted(lines) == sorted(names)
    # The same values give the same points: no line is moved to be seen.
    assert len({lines[n].attrs["points"] for n in names}) == 1
    styles = {
        (lines[n].attrs.get("stroke-dasharray", ""), lines[n].attrs["stroke-width"]) for n in names
    }
    assert len(styles) == len(names), "every line has its own dash array and width"
    # Wider strokes are drawn first, so each narrower one stays visible on top.
    widths = [float(p.attrs["stroke-width"]) for p in svg.iter("polyline")]
    assert widths == sorted(widths, reverse=True)
    legend = svg.find_all("g", **{"class": "legend"})[0]
    assert {t.own_text() for t in legend.iter("text")} == set(names)


def test_tooltips_give_every_lines_value() -> None:
    page = _page(build())
    svg = _chart(page, "Messages per second")
    hover = svg.find_all("g", **{"class": "hover"})[0]
    tips = [rect.find_all("title")[0].text for rect in hover.iter("rect")]
    assert len(tips) == DURATION  # one column per interval
    assert tips[2].splitlines()[0] == "2.5 s after the start"
    for run in ("relay", "baseline"):
        for metric in ("sent", "ok", "delivered"):
            assert f"{run} {metric}: 100 msg/s" in tips[2].splitlines()
    figure = next(f for f in page.iter("figure") if svg in f.children)
    caption = figure.find_all("figcaption")[0].text
    assert "relay sent = baseline sent = relay ok" in caption


def test_time_axis_covers_the_whole_run_in_seconds() -> None:
    page = _page(build())
    for title in TIME_CHARTS:
        svg = _chart(page, title)
        axis = svg.find_all("g", **{"data-side": "bottom"})[0]
        lo, hi = (float(v) for v in axis.attrs["data-domain"].split())
        assert lo == 0.0 and hi == WALL, title  # past the 5 s of traffic: the wait after it
        ticks = [float(t.text) for t in axis.iter("text") if t.text.replace(".", "").isdigit()]
        assert ticks[0] == 0.0 and ticks[-1] == WALL, (title, ticks)
        label = list(axis.iter("text"))[-1].text
        assert label.endswith("(s)"), label


def test_memory_and_cpu_have_an_axis_each_with_its_unit() -> None:
    svg = _chart(_page(build()), "Server memory and CPU")
    axes = {
        g.attrs["data-side"]: g.attrs["data-label"] for g in svg.find_all("g", **{"class": "axis"})
    }
    assert "MiB" in axes["left"] and "%" in axes["right"], axes
    lines = _series(svg)
    assert {"relay RSS (MiB)", "relay CPU (% of one core)"} <= set(lines)
    right = svg.find_all("g", **{"data-side": "right"})[0]
    # CPU is 25 % of one core throughout: the right axis is scaled for it, not for MiB.
    right_ticks = [float(t.text) for t in right.iter("text") if t.text.replace(".", "").isdigit()]
    assert 25 <= max(right_ticks) <= 50, right_ticks


def _workload_options(page: Node) -> set[str]:
    heading = [h for h in page.iter("h2") if h.text == "Workload"]
    assert heading
    tables = [t for t in page.iter("table") if t.attrs.get("class") == "workload"]
    assert len(tables) == 1
    return {row.find_all("td")[0].text for row in tables[0].iter("tr")}


@pytest.mark.parametrize("scenario", list(Scenario))
def test_workload_lists_only_the_options_of_the_scenario(scenario: Scenario) -> None:
    shown = _workload_options(_page(build(scenario, baseline=False)))
    specific = frozenset().union(*SCENARIO_OPTIONS.values())
    fields = {f.name for f in dataclasses.fields(Workload)} - {"scenario"}
    assert shown == (fields - specific) | SCENARIO_OPTIONS[scenario]
    if scenario is Scenario.STEADY:
        assert not shown & {"group", "queue", "connect_rate", "hold", "jitter"}
    if scenario is Scenario.CONNECT_STORM:
        assert {"connect_rate", "hold"} <= shown and "rate" not in shown


def test_the_scenario_table_names_workload_fields() -> None:
    fields = {f.name for f in dataclasses.fields(Workload)}
    assert set(SCENARIO_OPTIONS) == set(Scenario)
    for options in SCENARIO_OPTIONS.values():
        assert options <= fields


def test_charts_take_the_page_width_and_nothing_is_fetched() -> None:
    text = html.render(build())
    page = parse(text)
    svgs = list(page.iter("svg"))
    assert len(svgs) >= len(TIME_CHARTS) + 2  # and a latency histogram per run
    for svg in svgs:
        assert svg.attrs["width"] == "100%"
        assert "height" not in svg.attrs  # the height follows from the viewBox
        assert len(svg.attrs["viewbox"].split()) == 4
        assert svg.attrs["preserveaspectratio"] == "xMidYMid meet"
    assert not list(page.iter("script")) and not list(page.iter("link"))
    assert not [n for n in page.iter() if "src" in n.attrs or "href" in n.attrs]


def test_a_single_run_is_drawn_solid_and_named_by_metric() -> None:
    lines = _series(_chart(_page(build(baseline=False)), "Messages per second"))
    assert sorted(lines) == ["delivered", "ok", "sent"]
    assert all("stroke-dasharray" not in p.attrs for p in lines.values())


def test_maximum_throughput_searches_share_their_charts() -> None:
    rep = build()
    for name, rates in (("relay", (600.0, 900.0)), ("baseline", (600.0, 900.0, 1350.0))):
        rep.runs[name] = dataclasses.replace(
            rep.runs[name],
            max_throughput=MaxThroughput(
                max_rate=rates[-1],
                thresholds=Thresholds(),
                steps=tuple(
                    Step(rate=r, delivered_per_s=r, p99_ms=5.0, passed=True) for r in rates
                ),
            ),
        )
    page = _page(rep)
    lines = _series(_chart(page, "Delivered rate by target rate"))
    assert {"relay delivered", "baseline delivered", "target"} <= set(lines)
    assert "stroke-dasharray" in lines["baseline delivered"].attrs
    axis = _chart(page, "Delivered rate by target rate").find_all("g", **{"data-side": "bottom"})[0]
    assert axis.attrs["data-domain"] == "600 1350"


def test_coinciding_groups_equal_lines_on_the_same_axis_only() -> None:
    x = [0.5, 1.5, 2.5]
    lines = [
        Line("a", x, [1.0, 2.0, None], "#000"),
        Line("b", x, [1.0, 2.0, None], "#111", width=3),
        Line("c", x, [1.0, 2.0, None], "#222", right=True),
        Line("d", x, [1.0, 2.5, None], "#333"),
        Line("e", x, [None, None, None], "#444"),
        Line("f", x, [None, None, None], "#555"),
    ]
    assert coinciding(lines) == [["a", "b"]]
