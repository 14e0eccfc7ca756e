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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from loadtest.figures import Column, MaxThroughput, RunResult, Series, Step
from loadtest.svg import Axis, Line, LineChart, Mark

RUN_DASHES = ("", "7 4", "2 3")
METRIC_WIDTHS = (6.0, 3.5, 1.5)
WIDER_BY_RUN = 1.6  # a later run's line is this much wider than the first run's
TIME_AXIS = Axis("time since the run's start (s)", unit="s")
UNMARKED = frozenset({"settled"})  # the end of the wait for late answers: the run's end


@dataclass(frozen=True, slots=True)
class Metric:
    """One series of a run (`values` picks it from the run's `Series`) as a chart draws it."""

    values: Callable[[Series], Column]
    label: str
    color: str
    right: bool = False
    # Where a value sits, in intervals from its interval's start: 0.5 for a count or a
    # percentile over the interval, 0 for a sample taken at its start (RSS, connections
    # open), -0.5 for a rate over the interval before (server CPU).
    offset: float = 0.5


@dataclass(frozen=True, slots=True)
class TimeChart:
    """One time-series chart: its axes and metrics (`server`: drawn only with a server probe)."""

    title: str
    left: Axis
    metrics: tuple[Metric, ...]
    right: Axis | None = None
    server: bool = False


TIME_CHARTS = (
    TimeChart(
        "Messages per second",
        Axis("messages / s", unit="msg/s"),
        (
            Metric(lambda s: s.sent_per_s, "sent", "#1f77b4"),
            Metric(lambda s: s.ok_per_s, "ok", "#ff7f0e"),
            Metric(lambda s: s.delivered_per_s, "delivered", "#2ca02c"),
        ),
    ),
    TimeChart(
        "Delivery latency percentiles (scheduled send → delivery)",
        Axis("latency (ms, log scale)", unit="ms", log=True),
        (
            Metric(lambda s: s.p50_ms, "p50", "#1f77b4"),
            Metric(lambda s: s.p99_ms, "p99", "#ff7f0e"),
            Metric(lambda s: s.p999_ms, "p99.9", "#9467bd"),
        ),
    ),
    TimeChart(
        "Connections",
        Axis("open connections", unit="connections"),
        (
            Metric(lambda s: s.connections, "open connections", "#1f77b4", offset=0.0),
            Metric(lambda s: s.handshakes_per_s, "handshakes / s", "#ff7f0e", right=True),
        ),
        right=Axis("handshakes / s", unit="/s"),
    ),
    TimeChart(
        "Errors per second",
        Axis("errors / s", unit="/s"),
        (Metric(lambda s: s.errors_per_s, "errors", "#d62728"),),
    ),
    TimeChart(
        "Server memory and CPU",
        Axis("memory: RSS (MiB)", unit="MiB"),
        (
            Metric(lambda s: s.server_rss_mb, "RSS (MiB)", "#9467bd", offset=0.0),
            Metric(
                lambda s: s.server_cpu_percent,
                "CPU (% of one core)",
                "#8c564b",
                right=True,
                offset=-0.5,
            ),
        ),
        right=Axis("CPU (% of one core)", unit="%"),
        server=True,
    ),
)


@dataclass(frozen=True, slots=True)
class RunSeries:
    """One run's per-interval series (`starts`: each interval's start, s since the run's start)."""

    name: str
    starts: Sequence[float]
    bucket: float
    values: Series
    span_s: float
    marks: Mapping[str, float]

    @classmethod
    def of(cls, name: str, run: RunResult, bucket: float) -> RunSeries:
        starts = run.series.t_s
        marks = {k: float(v) for k, v in run.marks_s.items()}
        span = max(
            float(run.generator.wall_seconds),
            float(run.throughput.measured_seconds),
            len(starts) * bucket,
            *marks.values(),
        )
        return cls(name, starts, bucket, run.series, span, marks)

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
                    y=m.values(run.values),
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


def _after_start(x: float) -> str:
    return f"{x:g} s after the start"


def time_charts(runs: Sequence[RunSeries]) -> list[LineChart]:
    """The time-series charts, every run on the same axes (server figures when probed)."""
    domain = (0.0, max(run.span_s for run in runs))
    marks = _marks(runs)
    probed = any(v is not None for run in runs for v in run.values.server_rss_mb)
    return [
        LineChart(
            title=spec.title,
            x_axis=TIME_AXIS,
            left=spec.left,
            right=spec.right,
            lines=overlay(runs, spec.metrics),
            x_domain=domain,
            marks=marks,
            x_hover=_after_start,
        )
        for spec in TIME_CHARTS
        if probed or not spec.server
    ]


def max_throughput_charts(searches: Mapping[str, MaxThroughput]) -> list[LineChart]:
    """Delivered rate and p99 by target rate, every run's search on the same axes."""
    steps = {
        name: sorted(search.steps, key=lambda st: st.rate) for name, search in searches.items()
    }
    many = len(steps) > 1
    rates = sorted({st.rate for run in steps.values() for st in run})

    def line(
        r: int, name: str, label: str, value: Callable[[Step], float | None], color: str
    ) -> Line:
        run = steps[name]
        return Line(
            name=f"{name} {label}" if many else label,
            x=[st.rate for st in run],
            y=[value(st) for st in run],
            color=color,
            width=METRIC_WIDTHS[1] + (WIDER_BY_RUN if r else 0.0),
            dash=RUN_DASHES[min(r, len(RUN_DASHES) - 1)],
        )

    x_axis = Axis("target rate (msg/s)", unit="msg/s")

    def target(x: float) -> str:
        return f"target {x:,.0f} msg/s"

    delivered = [
        line(r, n, "delivered", lambda st: st.delivered_per_s, "#2ca02c")
        for r, n in enumerate(steps)
    ]
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
            lines=[line(r, n, "p99", lambda st: st.p99_ms, "#d62728") for r, n in enumerate(steps)],
            x_hover=target,
        ),
    ]
