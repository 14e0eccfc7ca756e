"""The figures of one run, as typed frozen records that read and write `report.json`.

`loadtest.results.merge` builds a `RunResult`; the report, its HTML page, the
summary table, `compare` and the maximum-throughput search read its attributes.
`as_json` writes the report's format (key for key, in order); `from_json` reads
it back, reports written before these records existed included (a figure they
lack reads as absent). Latencies are in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from loadtest.ledger import Counts


@dataclass(frozen=True, slots=True)
class Latency:
    """Count, mean, percentiles and max of one latency histogram (ms; None when empty)."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None

    def as_json(self) -> dict[str, float | None]:
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p99.9": self.p999,
            "max": self.max,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Latency:
        return cls(
            count=int(data.get("count", 0)),
            mean=data.get("mean"),
            p50=data.get("p50"),
            p90=data.get("p90"),
            p99=data.get("p99"),
            p999=data.get("p99.9"),
            max=data.get("max"),
        )


@dataclass(frozen=True, slots=True)
class Latencies:
    """One `Latency` per kind: send → ok, scheduled send → delivery, handshake, lag, drain."""

    ok: Latency = Latency()
    delivery: Latency = Latency()
    handshake: Latency = Latency()
    lag: Latency = Latency()
    drain: Latency = Latency()

    def items(self) -> Iterator[tuple[str, Latency]]:
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def as_json(self) -> dict[str, dict[str, float | None]]:
        return {name: latency.as_json() for name, latency in self.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Latencies:
        return cls(**{f.name: Latency.from_json(data.get(f.name, {})) for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """Rates over the measured phase, and the scenario-specific figures (None: not measured)."""

    target_rate: float
    sent_per_s: float
    delivered_per_s: float
    measured_seconds: float
    drain_seconds: float | None = None
    drain_per_s: float | None = None
    recovery_seconds: float | None = None
    connections_peak: float | None = None
    server_rss_per_connection_kb: float | None = None

    def extras(self) -> dict[str, float]:
        """The scenario-specific figures this run measured, by name, in report order."""
        names = [f.name for f in fields(self)][4:]
        return {n: v for n in names if (v := getattr(self, n)) is not None}

    def as_json(self) -> dict[str, float]:
        return {
            "target_rate": self.target_rate,
            "sent_per_s": self.sent_per_s,
            "delivered_per_s": self.delivered_per_s,
            "measured_seconds": self.measured_seconds,
            **self.extras(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Throughput:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Generator:
    """The load generator's own cost: processes, CPU, wall-clock and set-up time."""

    procs: int
    cpu_seconds: float
    cpu_percent_of_one_core: float
    wall_seconds: float
    setup_seconds: float

    def as_json(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Generator:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """The server's memory (MiB) and CPU time over the run (None: no probe sample)."""

    rss_start_mb: float | None = None
    rss_peak_mb: float | None = None
    cpu_seconds: float | None = None

    def as_json(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Server:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


Column = tuple[float | None, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """Per-interval values over the measured phase (`t_s`: each interval's start, s)."""

    t_s: tuple[float, ...] = ()
    sent_per_s: Column = ()
    ok_per_s: Column = ()
    delivered_per_s: Column = ()
    errors_per_s: Column = ()
    handshakes_per_s: Column = ()
    connections: Column = ()
    p50_ms: Column = ()
    p99_ms: Column = ()
    p999_ms: Column = ()
    server_rss_mb: Column = ()
    server_cpu_percent: Column = ()

    def as_json(self) -> dict[str, list[float | None]]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Series:
        return cls(**{f.name: tuple(data.get(f.name, ())) for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """When a step of the maximum-throughput search passes, and how the search steps."""

    max_p99_ms: float = 100.0
    max_loss: float = 0.0
    min_achieved: float = 0.95
    factor: float = 1.5
    refine: int = 2
    max_steps: int = 12

    def as_json(self) -> dict[str, float]:
        """The thresholds as reported (the step budget `max_steps` is not)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "max_steps"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thresholds:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One rate the maximum-throughput search tried, and whether it passed."""

    rate: float
    delivered_per_s: float
    p99_ms: float | None
    lost: int = 0
    errors: int = 0
    passed: bool

    def as_json(self) -> dict[str, float | bool | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        return cls(
            rate=data["rate"],
            delivered_per_s=data["delivered_per_s"],
            p99_ms=data.get("p99_ms"),
            lost=data.get("lost", 0),
            errors=data.get("errors", 0),
            passed=bool(data["passed"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MaxThroughput:
    """The search's outcome: the highest passing rate (0 if none), its thresholds, each step."""

    max_rate: float
    thresholds: Thresholds
    steps: tuple[Step, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "max_rate": self.max_rate,
            "thresholds": self.thresholds.as_json(),
            "steps": [s.as_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MaxThroughput:
        return cls(
            max_rate=data["max_rate"],
            thresholds=Thresholds.from_json(data.get("thresholds", {})),
            steps=tuple(Step.from_json(s) for s in data["steps"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One run against one target (`runs.<name>` of report.json)."""

    target: str
    counts: Counts
    connection_errors: dict[str, int]
    latency_ms: Latencies
    histogram_ms: tuple[tuple[float, int], ...]  # (upper bound ms, count) bars
    throughput: Throughput
    marks_s: dict[str, float]
    generator: Generator
    server: Server
    series: Series
    max_throughput: MaxThroughput | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "counts": self.counts.as_json(),
            "connection_errors": dict(self.connection_errors),
            "latency_ms": self.latency_ms.as_json(),
            "histogram_ms": [list(bar) for bar in self.histogram_ms],
            "throughput": self.throughput.as_json(),
            "marks_s": dict(self.marks_s),
            "generator": self.generator.as_json(),
            "server": self.server.as_json(),
            "series": self.series.as_json(),
        }
        if self.max_throughput is not None:
            out["max_throughput"] = self.max_throughput.as_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        search = data.get("max_throughput")
        return cls(
            target=data["target"],
            counts=Counts.from_json(data["counts"]),
            connection_errors=dict(data.get("connection_errors", {})),
            latency_ms=Latencies.from_json(data["latency_ms"]),
            histogram_ms=tuple((float(b[0]), int(b[1])) for b in data.get("histogram_ms", [])),
            throughput=Throughput.from_json(data["throughput"]),
            marks_s=dict(data.get("marks_s", {})),
            generator=Generator.from_json(data["generator"]),
            server=Server.from_json(data.get("server", {})),
            series=Series.from_json(data.get("series", {})),
            max_throughput=None if search is None else MaxThroughput.from_json(search),
        )
