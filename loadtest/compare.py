"""`relay-loadtest compare A.json B.json`: what changed between two reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loadtest.figures import RunResult
from loadtest.report import Report

Figure = Callable[[RunResult], float | int | None]


def _max_rate(r: RunResult) -> float | None:
    return None if r.max_throughput is None else r.max_throughput.max_rate


METRICS: tuple[tuple[str, Figure], ...] = (
    ("delivered msg/s", lambda r: r.throughput.delivered_per_s),
    ("sent msg/s", lambda r: r.throughput.sent_per_s),
    ("ok p50 ms", lambda r: r.latency_ms.ok.p50),
    ("ok p99 ms", lambda r: r.latency_ms.ok.p99),
    ("delivery p50 ms", lambda r: r.latency_ms.delivery.p50),
    ("delivery p99 ms", lambda r: r.latency_ms.delivery.p99),
    ("delivery p99.9 ms", lambda r: r.latency_ms.delivery.p999),
    ("delivery max ms", lambda r: r.latency_ms.delivery.max),
    ("handshake p99 ms", lambda r: r.latency_ms.handshake.p99),
    ("drain p99 ms", lambda r: r.latency_ms.drain.p99),
    ("sent", lambda r: r.counts.sent),
    ("delivered", lambda r: r.counts.delivered),
    ("lost", lambda r: r.counts.lost),
    ("duplicated", lambda r: r.counts.duplicated),
    ("delivered after ack", lambda r: r.counts.delivered_after_ack),
    ("delivered after a confirmed ack", lambda r: r.counts.delivered_after_confirmed_ack),
    ("retried, delivered after a confirmed ack", lambda r: r.counts.retried_after_confirmed_ack),
    ("unanswered", lambda r: r.counts.unanswered),
    ("errors", lambda r: r.counts.errors),
    ("max rate msg/s", _max_rate),
    ("generator CPU %", lambda r: r.generator.cpu_percent_of_one_core),
    ("server CPU s", lambda r: r.server.cpu_seconds),
    ("server RSS peak MiB", lambda r: r.server.rss_peak_mb),
)


@dataclass(frozen=True, slots=True)
class Row:
    section: str
    name: str
    a: Any
    b: Any

    @property
    def change(self) -> float | None:
        """Relative change from A to B (0.1 = +10 %), when both are numbers and A is not 0."""
        if isinstance(self.a, int | float) and isinstance(self.b, int | float) and self.a:
            return (self.b - self.a) / abs(self.a)
        return None


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flat(f"{prefix}.{k}" if prefix else k, v)
    else:
        yield prefix, value


def _settings(section: str, a: dict[str, Any], b: dict[str, Any]) -> Iterator[Row]:
    """The workload or environment fields that differ (the load average always does)."""
    fa, fb = dict(_flat("", a)), dict(_flat("", b))
    for key in sorted(set(fa) | set(fb)):
        if key != "load_average" and fa.get(key) != fb.get(key):
            yield Row(section, key, fa.get(key), fb.get(key))


def compare(a: Report, b: Report) -> list[Row]:
    """Rows for every differing workload or environment field and every metric of each run."""
    rows = [*_settings("workload", a.workload, b.workload)]
    rows += _settings("environment", a.environment, b.environment)
    for run in sorted(set(a.runs) | set(b.runs)):
        ra, rb = a.runs.get(run), b.runs.get(run)
        for name, figure in METRICS:
            va = None if ra is None else figure(ra)
            vb = None if rb is None else figure(rb)
            if va is not None or vb is not None:
                rows.append(Row(run, name, va, vb))
    ratios_a, ratios_b = a.ratios_to_baseline or {}, b.ratios_to_baseline or {}
    for key in sorted(set(ratios_a) | set(ratios_b)):
        rows.append(Row("relay ÷ baseline", key, ratios_a.get(key), ratios_b.get(key)))
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def format_rows(rows: list[Row]) -> str:
    """A plain-text table: section, metric, A, B, change."""
    table = [("section", "metric", "A", "B", "change")]
    for r in rows:
        ch = r.change
        table.append(
            (r.section, r.name, _cell(r.a), _cell(r.b), "" if ch is None else f"{ch:+.1%}")
        )
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
