"""Merge the outcomes of the generator processes into one run's result (JSON-ready).

Latencies are reported in milliseconds; throughput in messages per second over
the measured phase.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.ledger import Counts
from loadtest.recorder import LATENCIES, SERIES, new_histogram
from loadtest.worker import Outcome
from loadtest.workload import Scenario, Workload

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
HISTOGRAM_BARS = 40


def summary(h: HdrHistogram) -> dict[str, float]:
    """Count, mean, percentiles and max of a µs histogram, in ms."""
    if h.get_total_count() == 0:
        return {"count": 0}
    out: dict[str, float] = {"count": h.get_total_count(), "mean": h.get_mean_value() / 1000}
    for p in PERCENTILES:
        out[f"p{p:g}"] = h.get_value_at_percentile(p) / 1000
    out["max"] = h.get_max_value() / 1000
    return out


def buckets(h: HdrHistogram, n: int = HISTOGRAM_BARS) -> list[list[float]]:
    """About `n` [upper bound ms, count] bars between the smallest and largest value (for plotting).

    Logarithmic bars when the values span a factor of ten or more, linear ones otherwise.
    """
    if h.get_total_count() == 0:
        return []
    lo, hi = max(1, h.get_min_value()), max(1, h.get_max_value())
    if hi / lo >= 10:
        steps = h.get_log_iterator(lo, (hi / lo) ** (1 / n))
    else:
        steps = h.get_linear_iterator(max(1, math.ceil((hi - lo) / n)))
    out: list[list[float]] = []
    for item in steps:
        if out or item.count_added_in_this_iter_step:
            out.append([item.value_iterated_to / 1000, item.count_added_in_this_iter_step])
    return out


@dataclass(slots=True)
class ServerTrace:
    """Samples of the server's RSS and CPU, by interval index."""

    rss: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)


def merge(
    workload: Workload,
    outcomes: list[Outcome],
    server: ServerTrace,
    *,
    target: str,
    runner_cpu: float,
) -> dict[str, Any]:
    """One run's result: counts, latencies, throughput, series, generator and server figures."""
    counts = Counts()
    hists = {name: new_histogram() for name in LATENCIES}
    per_interval: dict[int, HdrHistogram] = {}
    series: dict[str, dict[int, float]] = {name: {} for name in SERIES}
    conn_errors: dict[str, int] = {}
    marks: dict[str, float] = {}
    cpu = wall = setup = 0.0
    for o in outcomes:
        counts.add(o.counts)
        rec = o.recording
        for name, data in rec.histograms.items():
            hists[name].add(HdrHistogram.decode(data))
        for i, data in rec.interval_delivery.items():
            per_interval.setdefault(i, new_histogram()).add(HdrHistogram.decode(data))
        for name, values in rec.series.items():
            target_series = series.setdefault(name, {})
            for i, v in values.items():
                target_series[i] = target_series.get(i, 0.0) + v
        for kind, n in rec.connection_errors.items():
            conn_errors[kind] = conn_errors.get(kind, 0) + n
        for name, t in rec.marks.items():
            early = name.endswith("start") or name == "drop"
            if name not in marks:
                marks[name] = t
            else:
                marks[name] = min(marks[name], t) if early else max(marks[name], t)
        cpu += rec.cpu_seconds
        wall = max(wall, rec.wall_seconds)
        setup = max(setup, o.setup_seconds)

    bucket = workload.bucket
    timed = workload.scenario in (
        Scenario.STEADY,
        Scenario.SOAK,
        Scenario.FANOUT,
        Scenario.RECONNECT_STORM,
    )
    measured = min(workload.duration, wall) if timed else wall
    # The series cover the measured phase (whole intervals); late deliveries are in the counts.
    last = max(0, math.ceil(measured / bucket - 1e-9) - 1)
    t_axis = [i * bucket for i in range(last + 1)]

    def column(values: dict[int, float], rate: bool) -> list[float]:
        return [values.get(i, 0.0) / (bucket if rate else 1.0) for i in range(last + 1)]

    def pct(p: float) -> list[float | None]:
        return [
            per_interval[i].get_value_at_percentile(p) / 1000 if i in per_interval else None
            for i in range(last + 1)
        ]

    delivered_window = sum(v for i, v in series["delivered"].items() if i * bucket < measured)
    cpu_series = [server.cpu.get(i) for i in range(last + 1)]
    cpu_rate: list[float | None] = [None]
    for prev, cur in itertools.pairwise(cpu_series):
        cpu_rate.append(
            (cur - prev) / bucket * 100 if cur is not None and prev is not None else None
        )
    rss_values = [v for v in server.rss.values()]
    extra: dict[str, float] = {}
    if "drain_start" in marks and "drain_end" in marks:
        span = marks["drain_end"] - marks["drain_start"]
        extra["drain_seconds"] = span
        extra["drain_per_s"] = counts.delivered / span if span > 0 else 0.0
    if "drop" in marks and "recovered" in marks:
        extra["recovery_seconds"] = marks["recovered"] - marks["drop"]
    peak_conns = max(series["connections"].values(), default=0.0)
    extra["connections_peak"] = peak_conns
    if workload.scenario is Scenario.CONNECT_STORM and rss_values and peak_conns:
        extra["server_rss_per_connection_kb"] = (
            (max(rss_values) - rss_values[0]) / 1024 / peak_conns
        )
    result: dict[str, Any] = {
        "target": target,
        "counts": _counts_json(counts),
        "connection_errors": dict(sorted(conn_errors.items())),
        "latency_ms": {name: summary(h) for name, h in hists.items()},
        "histogram_ms": buckets(hists["delivery"]),
        "throughput": {
            "target_rate": workload.rate,
            "sent_per_s": counts.sent / measured if measured else 0.0,
            "delivered_per_s": delivered_window / measured if measured else 0.0,
            "measured_seconds": measured,
            **extra,
        },
        "marks_s": marks,
        "generator": {
            "procs": len(outcomes),
            "cpu_seconds": cpu + runner_cpu,
            "cpu_percent_of_one_core": (cpu + runner_cpu) / wall * 100 if wall else 0.0,
            "wall_seconds": wall,
            "setup_seconds": setup,
        },
        "server": {
            "rss_start_mb": rss_values[0] / 2**20 if rss_values else None,
            "rss_peak_mb": max(rss_values) / 2**20 if rss_values else None,
            "cpu_seconds": (
                max(server.cpu.values()) - min(server.cpu.values()) if server.cpu else None
            ),
        },
        "series": {
            "t_s": t_axis,
            "sent_per_s": column(series["sent"], True),
            "ok_per_s": column(series["ok"], True),
            "delivered_per_s": column(series["delivered"], True),
            "errors_per_s": column(series["errors"], True),
            "handshakes_per_s": column(series["handshakes"], True),
            "connections": column(series["connections"], False),
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "p999_ms": pct(99.9),
            "server_rss_mb": [
                server.rss[i] / 2**20 if i in server.rss else None for i in range(last + 1)
            ],
            "server_cpu_percent": cpu_rate,
        },
    }
    return result


def _counts_json(c: Counts) -> dict[str, Any]:
    return {
        "scheduled": c.scheduled,
        "sent": c.sent,
        "ok": c.ok,
        "errors": c.errors,
        "delivered": c.delivered,
        "duplicated": c.duplicated,
        "delivered_after_ack": c.delivered_after_ack,
        "lost": c.lost,
        "unanswered": c.unanswered,
        "unexpected": c.unexpected,
        "errors_by_code": c.errors_by_code,
    }
