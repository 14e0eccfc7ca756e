"""The charts of `report.html`: the relay and the baseline forwarder on the same axes.

Each metric has one colour in both runs. The relay (the first run) is drawn
solid; the baseline dashed and a little wider, underneath. Within a run the
metrics of a chart get decreasing widths. So when lines have equal values (sent
= ok = delivered, relay = baseline) each one still shows as a band or as dashes
around a narrower line, and the legend, a caption and the tooltips say which.
Time runs from each run's start (its `t0`) to the end of the longer run,
ramp-up, drain and the wait for late answers included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.svg import Axis, Line, LineChart, Mark

RUN_DASHES = ("", "7 4", "2 3")
METRIC_WIDTHS = (6.0, 3.5, 1.5)
WIDER_BY_RUN = 1.6  # a later run's line is this much wider than the first run's
TIME_AXIS = Axis("time since the run's start (s)", unit="s")
UNMARKED = frozenset({"settled"})  # the end of the wait for late answers: the run's end


@dataclass(frozen=True, slots=True)
class Metric:
    """One series of the report (`key` in a run's `series`) as a chart draws it."""

    key: str
    label: str
    color: str
    right: bool = False
    # Where a value sits, in intervals from its interval's start: 0.5 for a count or a
    # percentile over the interval, 0 for a sample taken at its start (RSS, connections
    # open), -0.5 for a rate over the interval before (server CPU).
    offset: float = 0.5


@dataclass(frozen=True, slots=True)
class RunSeries:
    """One run's per-interval series (`starts`: each interval's start, s since the run's start)."""

    name: str
    starts: list[float]
    bucket: float
    values: Mapping[str, Sequence[float | None]]
    span_s: float
    marks: Mapping[str, float]

    @classmethod
    def of(cls, name: str, run: Mapping[str, Any], bucket: float) -> RunSeries:
        series = run["series"]
        starts: list[float] = series["t_s"]
        marks = {k: float(v) for k, v in run.get("marks_s", {}).items()}
        span = max(
            float(run["generator"]["wall_seconds"]),
            float(run["throughput"]["measured_seconds"]),
            len(starts) * bucket,
            *marks.values(),
        )
        return cls(name, starts, bucket, series, span, marks)

    def x(self, metric: Metric) -> list[float]:
        return [t + metric.offset * self.bucket for t in self.starts]


def overlay(runs: Sequence[RunSeries], metrics: Sequence[Metric]) -> list[Line]:
    """One line per metric and run: colour by metric, dash and extra width by run."""
    lines: list[Line] = []
    for i, m in enumerate(metrics):
        width = METRIC_WIDTHS[min(i, len(METRIC_WIDTHS) - 1)]
        for r, run in enumerate(runs):
            lines.append(
                Line(
                    name=f"{run.name} {m.label}" if len(runs) > 1 else m.label,
                    x=run.x(m),
                    y=run.values[m.key],
                    color=m.color,
                    width=width + (WIDER_BY_RUN if r else 0.0),
                    dash=RUN_DASHES[min(r, len(RUN_DASHES) - 1)],
                    right=m.right,
                )
            )
    return lines


def _marks(runs: Sequence[RunSeries]) -> list[Mark]:
    return [
        Mark(
            f"{run.name} {name}" if len(runs) > 1 else name,
            at,
            dash=RUN_DASHES[min(r, len(RUN_DASHES) - 1)],
            labelled=r == 0,
        )
        for r, run in enumerate(runs)
        for name, at in run.marks.items()
        if name not in UNMARKED
    ]


def time_charts(runs: Sequence[RunSeries]) -> list[LineChart]:
    """The time-series charts, every run on the same axes."""
    domain = (0.0, max(run.span_s for run in runs))
    marks = _marks(runs)

    def at(x: float) -> str:
        return f"{x:g} s after the start"

    def chart(
        title: str, left: Axis, metrics: Sequence[Metric], right: Axis | None = None
    ) -> LineChart:
        return LineChart(
            title=title,
            x_axis=TIME_AXIS,
            left=left,
            right=right,
            lines=overlay(runs, metrics),
            x_domain=domain,
            marks=marks,
            x_hover=at,
        )

    charts = [
        chart(
            "Messages per second",
            Axis("messages / s", unit="msg/s"),
            [
                Metric("sent_per_s", "sent", "#1f77b4"),
                Metric("ok_per_s", "ok", "#ff7f0e"),
                Metric("delivered_per_s", "delivered", "#2ca02c"),
            ],
        ),
        chart(
            "Delivery latency percentiles (scheduled send → delivery)",
            Axis("latency (ms, log scale)", unit="ms", log=True),
            [
                Metric("p50_ms", "p50", "#1f77b4"),
                Metric("p99_ms", "p99", "#ff7f0e"),
                Metric("p999_ms", "p99.9", "#9467bd"),
            ],
        ),
        chart(
            "Connections",
            Axis("open connections", unit="connections"),
            [
                Metric("connections", "open connections", "#1f77b4", offset=0.0),
                Metric("handshakes_per_s", "handshakes / s", "#ff7f0e", right=True),
            ],
            right=Axis("handshakes / s", unit="/s"),
        ),
        chart(
            "Errors per second",
            Axis("errors / s", unit="/s"),
            [Metric("errors_per_s", "errors", "#d62728")],
        ),
    ]
    if any(v is not None for run in runs for v in run.values["server_rss_mb"]):
        charts.append(
            chart(
                "Server memory and CPU",
                Axis("memory: RSS (MiB)", unit="MiB"),
                [
                    Metric("server_rss_mb", "RSS (MiB)", "#9467bd", offset=0.0),
                    Metric(
                        "server_cpu_percent",
                        "CPU (% of one core)",
                        "#8c564b",
                        right=True,
                        offset=-0.5,
                    ),
                ],
                right=Axis("CPU (% of one core)", unit="%"),
            )
        )
    return charts


def max_throughput_charts(searches: Mapping[str, Mapping[str, Any]]) -> list[LineChart]:
    """Delivered rate and p99 by target rate, every run's search on the same axes."""
    steps = {
        name: sorted(search["steps"], key=lambda st: float(st["rate"]))
        for name, search in searches.items()
    }
    many = len(steps) > 1
    rates = sorted({float(st["rate"]) for run in steps.values() for st in run})

    def line(r: int, name: str, label: str, key: str, color: str) -> Line:
        run = steps[name]
        return Line(
            name=f"{name} {label}" if many else label,
            x=[float(st["rate"]) for st in run],
            y=[st[key] for st in run],
            color=color,
            width=METRIC_WIDTHS[1] + (WIDER_BY_RUN if r else 0.0),
            dash=RUN_DASHES[min(r, len(RUN_DASHES) - 1)],
        )

    x_axis = Axis("target rate (msg/s)", unit="msg/s")

    def target(x: float) -> str:
        return f"target {x:,.0f} msg/s"

    delivered = [line(r, n, "delivered", "delivered_per_s", "#2ca02c") for r, n in enumerate(steps)]
    delivered.append(Line("target", rates, rates, "#555", width=1.2, dash="2 3"))
    return [
        LineChart(
            title="Delivered rate by target rate",
            x_axis=x_axis,
            left=Axis("delivered msg/s", unit="msg/s"),
            lines=delivered,
            x_hover=target,
        ),
        LineChart(
            title="Delivery p99 by target rate",
            x_axis=x_axis,
            left=Axis("p99 (ms, log scale)", unit="ms", log=True),
            lines=[line(r, n, "p99", "p99_ms", "#d62728") for r, n in enumerate(steps)],
            x_hover=target,
        ),
    ]
