"""Merge the outcomes of the generator processes into one run's `RunResult`.

Latencies are reported in milliseconds; throughput in messages per second over
the measured phase.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from loadtest.figures import (
    Column,
    Generator,
    Latencies,
    Latency,
    RunResult,
    Series,
    Server,
    Throughput,
)
from loadtest.ledger import Counts
from loadtest.recorder import LATENCIES, SERIES, new_histogram
from loadtest.worker import Outcome
from loadtest.workload import Scenario, Workload

HISTOGRAM_BARS = 40
TIMED = frozenset(
    {Scenario.STEADY, Scenario.SOAK, Scenario.FANOUT, Scenario.RECONNECT_STORM, Scenario.FAULTS}
)


def summary(h: HdrHistogram) -> Latency:
    """Count, mean, percentiles and max of a µs histogram, in ms."""
    if h.get_total_count() == 0:
        return Latency()

    def ms(percentile: float) -> float:
        return float(h.get_value_at_percentile(percentile) / 1000)

    return Latency(
        count=h.get_total_count(),
        mean=h.get_mean_value() / 1000,
        p50=ms(50.0),
        p90=ms(90.0),
        p99=ms(99.0),
        p999=ms(99.9),
        max=h.get_max_value() / 1000,
    )


def buckets(h: HdrHistogram, n: int = HISTOGRAM_BARS) -> tuple[tuple[float, int], ...]:
    """About `n` (upper bound ms, count) bars between the smallest and largest value.

    Logarithmic bars when the values span a factor of ten or more, linear ones otherwise.
    """
    if h.get_total_count() == 0:
        return ()
    lo, hi = max(1, h.get_min_value()), max(1, h.get_max_value())
    if hi / lo >= 10:
        steps = h.get_log_iterator(lo, (hi / lo) ** (1 / n))
    else:
        steps = h.get_linear_iterator(max(1, math.ceil((hi - lo) / n)))
    out: list[tuple[float, int]] = []
    for item in steps:
        if out or item.count_added_in_this_iter_step:
            out.append((item.value_iterated_to / 1000, item.count_added_in_this_iter_step))
    return tuple(out)


@dataclass(slots=True)
class ServerTrace:
    """Samples of the server's RSS and CPU, by interval index."""

    rss: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class Pooled:
    """The recordings of every generator process added together."""

    counts: Counts = field(default_factory=Counts)
    histograms: dict[str, HdrHistogram] = field(
        default_factory=lambda: {name: new_histogram() for name in LATENCIES}
    )
    per_interval: dict[int, HdrHistogram] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(
        default_factory=lambda: {name: {} for name in SERIES}
    )
    connection_errors: dict[str, int] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    cpu: float = 0.0
    wall: float = 0.0
    setup: float = 0.0

    def add(self, o: Outcome) -> None:
        self.counts += o.counts
        rec = o.recording
        for name, data in rec.histograms.items():
            self.histograms[name].add(HdrHistogram.decode(data))
        for i, data in rec.interval_delivery.items():
            self.per_interval.setdefault(i, new_histogram()).add(HdrHistogram.decode(data))
        for name, values in rec.series.items():
            into = self.series.setdefault(name, {})
            for i, v in values.items():
                into[i] = into.get(i, 0.0) + v
        for kind, n in rec.connection_errors.items():
            self.connection_errors[kind] = self.connection_errors.get(kind, 0) + n
        for name, t in rec.marks.items():
            # A phase starts with the first process to start it and ends with the last.
            early = name.endswith("start") or name == "drop"
            seen = self.marks.get(name)
            self.marks[name] = t if seen is None else min(seen, t) if early else max(seen, t)
        self.cpu += rec.cpu_seconds
        self.wall = max(self.wall, rec.wall_seconds)
        self.setup = max(self.setup, o.setup_seconds)


def merge(
    workload: Workload,
    outcomes: list[Outcome],
    server: ServerTrace,
    *,
    target: str,
    runner_cpu: float,
) -> RunResult:
    """One run's result: counts, latencies, throughput, series, generator and server figures."""
    pooled = Pooled()
    for o in outcomes:
        pooled.add(o)
    measured = min(workload.duration, pooled.wall) if workload.scenario in TIMED else pooled.wall
    cpu = pooled.cpu + runner_cpu
    return RunResult(
        target=target,
        counts=pooled.counts,
        connection_errors=dict(sorted(pooled.connection_errors.items())),
        latency_ms=Latencies(**{name: summary(h) for name, h in pooled.histograms.items()}),
        histogram_ms=buckets(pooled.histograms["delivery"]),
        throughput=_throughput(workload, pooled, server, measured),
        marks_s=pooled.marks,
        generator=Generator(
            procs=len(outcomes),
            cpu_seconds=cpu,
            cpu_percent_of_one_core=cpu / pooled.wall * 100 if pooled.wall else 0.0,
            wall_seconds=pooled.wall,
            setup_seconds=pooled.setup,
        ),
        server=Server(
            rss_start_mb=next(iter(server.rss.values())) / 2**20 if server.rss else None,
            rss_peak_mb=max(server.rss.values()) / 2**20 if server.rss else None,
            cpu_seconds=max(server.cpu.values()) - min(server.cpu.values()) if server.cpu else None,
        ),
        series=_series(pooled, server, workload.bucket, measured),
    )


def _throughput(
    workload: Workload, pooled: Pooled, server: ServerTrace, measured: float
) -> Throughput:
    """Rates over the measured phase, and the figures of the drain, drop and storm scenarios."""
    marks, counts = pooled.marks, pooled.counts
    delivered = sum(
        v for i, v in pooled.series["delivered"].items() if i * workload.bucket < measured
    )
    drain = recovery = per_connection = None
    if "drain_start" in marks and "drain_end" in marks:
        drain = marks["drain_end"] - marks["drain_start"]
    if "drop" in marks and "recovered" in marks:
        recovery = marks["recovered"] - marks["drop"]
    peak = max(pooled.series["connections"].values(), default=0.0)
    rss = list(server.rss.values())
    if workload.scenario is Scenario.CONNECT_STORM and rss and peak:
        per_connection = (max(rss) - rss[0]) / 1024 / peak
    return Throughput(
        target_rate=workload.rate,
        sent_per_s=counts.sent / measured if measured else 0.0,
        delivered_per_s=delivered / measured if measured else 0.0,
        measured_seconds=measured,
        drain_seconds=drain,
        drain_per_s=None if drain is None else counts.delivered / drain if drain > 0 else 0.0,
        recovery_seconds=recovery,
        connections_peak=peak,
        server_rss_per_connection_kb=per_connection,
    )


def _series(pooled: Pooled, server: ServerTrace, bucket: float, measured: float) -> Series:
    """The per-interval series over the measured phase (whole intervals; late deliveries
    are in the counts)."""
    intervals = range(max(0, math.ceil(measured / bucket - 1e-9) - 1) + 1)

    def column(name: str, rate: bool = True) -> Column:
        values = pooled.series[name]
        return tuple(values.get(i, 0.0) / (bucket if rate else 1.0) for i in intervals)

    def percentile(p: float) -> Column:
        hists = pooled.per_interval
        return tuple(
            hists[i].get_value_at_percentile(p) / 1000 if i in hists else None for i in intervals
        )

    cpu = [server.cpu.get(i) for i in intervals]
    cpu_rate = (
        None,
        *(
            (cur - prev) / bucket * 100 if cur is not None and prev is not None else None
            for prev, cur in itertools.pairwise(cpu)
        ),
    )
    return Series(
        t_s=tuple(i * bucket for i in intervals),
        sent_per_s=column("sent"),
        ok_per_s=column("ok"),
        delivered_per_s=column("delivered"),
        errors_per_s=column("errors"),
        handshakes_per_s=column("handshakes"),
        connections=column("connections", rate=False),
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        p999_ms=percentile(99.9),
        server_rss_mb=tuple(server.rss[i] / 2**20 if i in server.rss else None for i in intervals),
        server_cpu_percent=cpu_rate,
    )
