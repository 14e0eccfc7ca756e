"""`relay-loadtest compare A.json B.json`: what changed between two reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("delivered msg/s", ("throughput", "delivered_per_s")),
    ("sent msg/s", ("throughput", "sent_per_s")),
    ("ok p50 ms", ("latency_ms", "ok", "p50")),
    ("ok p99 ms", ("latency_ms", "ok", "p99")),
    ("delivery p50 ms", ("latency_ms", "delivery", "p50")),
    ("delivery p99 ms", ("latency_ms", "delivery", "p99")),
    ("delivery p99.9 ms", ("latency_ms", "delivery", "p99.9")),
    ("delivery max ms", ("latency_ms", "delivery", "max")),
    ("handshake p99 ms", ("latency_ms", "handshake", "p99")),
    ("drain p99 ms", ("latency_ms", "drain", "p99")),
    ("sent", ("counts", "sent")),
    ("delivered", ("counts", "delivered")),
    ("lost", ("counts", "lost")),
    ("duplicated", ("counts", "duplicated")),
    ("delivered after ack", ("counts", "delivered_after_ack")),
    ("unanswered", ("counts", "unanswered")),
    ("errors", ("counts", "errors")),
    ("max rate msg/s", ("max_throughput", "max_rate")),
    ("generator CPU %", ("generator", "cpu_percent_of_one_core")),
    ("server CPU s", ("server", "cpu_seconds")),
    ("server RSS peak MiB", ("server", "rss_peak_mb")),
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


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flat(f"{prefix}.{k}" if prefix else k, v)
    else:
        yield prefix, value


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """Rows for every differing workload or environment field and every metric of each run."""
    rows: list[Row] = []
    for section in ("workload", "environment"):
        fa, fb = dict(_flat("", a.get(section, {}))), dict(_flat("", b.get(section, {})))
        for key in sorted(set(fa) | set(fb)):
            if key == "load_average":
                continue
            if fa.get(key) != fb.get(key):
                rows.append(Row(section, key, fa.get(key), fb.get(key)))
    for run in sorted(set(a.get("runs", {})) | set(b.get("runs", {}))):
        ra, rb = a.get("runs", {}).get(run, {}), b.get("runs", {}).get(run, {})
        for name, path in METRICS:
            va, vb = _dig(ra, path), _dig(rb, path)
            if va is None and vb is None:
                continue
            rows.append(Row(run, name, va, vb))
    ra, rb = a.get("ratios_to_baseline") or {}, b.get("ratios_to_baseline") or {}
    for key in sorted(set(ra) | set(rb)):
        rows.append(Row("relay ÷ baseline", key, ra.get(key), rb.get(key)))
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
