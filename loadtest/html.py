"""`report.html`: one self-contained page (inline SVG and CSS, nothing fetched) per report.

The runs of a report (the relay, and the baseline forwarder with `--baseline`)
share every table and time-series chart, so they are compared on the same axes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from html import escape
from pathlib import Path
from typing import Any

from loadtest.figures import RunResult
from loadtest.html_charts import RunSeries, max_throughput_charts, time_charts
from loadtest.ledger import Counts
from loadtest.report import Report
from loadtest.svg import LineChart, bar_chart, coinciding, line_chart
from loadtest.workload import Scenario, applies

CSS = """
body { font-family: sans-serif; margin: 1.5em 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; }
figure { margin: 1em 0 2em; }
svg { display: block; width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
@media (max-width: 900px) { body { margin: 1em 0.8em; } }
"""
BAD_COUNTS = frozenset(
    {
        "lost",
        "duplicated",
        "delivered_after_ack",
        "delivered_after_confirmed_ack",
        "unanswered",
        "unexpected",
        "errors",
    }
)
LATENCY_COLUMNS = ("count", "mean", "p50", "p90", "p99", "p99.9", "max")
BAD = ' class="bad"'


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return escape(str(v))


def _table(rows: Sequence[tuple[str, Any]], css_class: str = "") -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}>{body}</table>"


def _runs_table(runs: Mapping[str, RunResult], scenario: Scenario) -> str:
    """The ledger, throughput, generator and server figures: one column per run."""
    names = list(runs)
    head = "<tr><th>figure</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    rows: list[str] = []
    all_runs = list(runs.values())

    def row(label: str, values: list[Any], bad: bool = False) -> None:
        cells = "".join(f"<td{BAD if bad and v else ''}>{_fmt(v)}</td>" for v in values)
        rows.append(f"<tr><td>{escape(label)}</td>{cells}</tr>")

    for f in fields(Counts):
        if f.name != "errors_by_code":
            row(f.name, [getattr(r.counts, f.name) for r in all_runs], bad=f.name in BAD_COUNTS)
    thr = [r.throughput for r in all_runs]
    if applies(scenario, "rate"):
        row("target rate (msg/s)", [t.target_rate for t in thr])
    row("sent (msg/s)", [t.sent_per_s for t in thr])
    row("delivered (msg/s)", [t.delivered_per_s for t in thr])
    row("measured_seconds", [t.measured_seconds for t in thr])
    for key in dict.fromkeys(k for t in thr for k in t.extras()):
        row(key, [t.extras().get(key) for t in thr])
    row("generator processes", [r.generator.procs for r in all_runs])
    row("generator CPU (% of one core)", [r.generator.cpu_percent_of_one_core for r in all_runs])
    row("server CPU (s)", [r.server.cpu_seconds for r in all_runs])
    row(
        "server RSS start / peak (MiB)",
        [f"{_fmt(r.server.rss_start_mb)} / {_fmt(r.server.rss_peak_mb)}" for r in all_runs],
    )
    for key in dict.fromkeys(k for r in all_runs for k in r.marks_s):
        row(f"mark: {key} (s)", [r.marks_s.get(key) for r in all_runs])
    return f"<table>{head}{''.join(rows)}</table>"


def _latency_table(runs: Mapping[str, RunResult]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("latency (ms)", "run", *LATENCY_COLUMNS))
    rows = []
    by_run = {name: dict(run.latency_ms.items()) for name, run in runs.items()}
    kinds = dict.fromkeys(kind for latencies in by_run.values() for kind in latencies)
    for kind in kinds:
        for name, latencies in by_run.items():
            s = latencies[kind].as_json()
            if s.get("count"):
                cells = "".join(f"<td>{_fmt(s.get(c))}</td>" for c in LATENCY_COLUMNS)
                rows.append(f"<tr><td>{escape(kind)}</td><td>{escape(name)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _figure(chart: LineChart) -> str:
    """The chart and, when some lines lie on top of each other, a caption that says which."""
    caption = "; ".join(" = ".join(group) for group in coinciding(chart.lines))
    note = (
        f"<figcaption>Equal at every point, drawn on top of each other: {escape(caption)}."
        "</figcaption>"
        if caption
        else ""
    )
    return f"<figure>{line_chart(chart)}{note}</figure>"


def _distributions(name: str, run: RunResult) -> str:
    """A run's latency histogram and its errors by code."""
    hist = run.histogram_ms
    out = [
        bar_chart(
            f"Delivery latency histogram: {name}",
            [f"{b[0]:.3g}" for b in hist],
            [b[1] for b in hist],
            x_label="latency up to (ms)",
            y_label="messages",
        )
    ]
    errors = {**run.counts.errors_by_code, **run.connection_errors}
    if errors:
        out.append(
            bar_chart(
                f"Errors by code: {name}",
                list(errors),
                [float(v) for v in errors.values()],
                x_label="error code (closed:N = connection closed with code N)",
                y_label="count",
            )
        )
    else:
        out.append(
            f"<p class='good'>{escape(name)}: No errors: every request answered ok, "
            "no connection lost.</p>"
        )
    return "".join(f"<figure>{part}</figure>" for part in out)


def _max_throughput(runs: Mapping[str, RunResult]) -> str:
    searches = {n: r.max_throughput for n, r in runs.items() if r.max_throughput is not None}
    if not searches:
        return ""
    out = ["<h2>Maximum throughput search</h2>"]
    for name, search in searches.items():
        steps = sorted(search.steps, key=lambda st: st.rate)
        out.append(
            f"<h3>{escape(name)}</h3>"
            + _table(
                [("max rate passing (msg/s)", search.max_rate)]
                + [(f"step {st.rate:g} msg/s", "pass" if st.passed else "fail") for st in steps]
            )
        )
    out += [_figure(chart) for chart in max_throughput_charts(searches)]
    return "\n".join(out)


def _workload(workload: Mapping[str, Any]) -> str:
    """The options that shape this scenario's traffic (report.json keeps every option)."""
    scenario = Scenario(workload["scenario"])
    rows = [(k, v) for k, v in workload.items() if k != "scenario" and applies(scenario, k)]
    return (
        "<h2>Workload</h2>"
        f"<p>The options of <code>{escape(scenario)}</code>; the others do not apply to it "
        "(report.json lists them all).</p>" + _table(rows, "workload")
    )


def render(report: Report) -> str:
    w = report.workload
    runs = report.runs
    scenario = Scenario(w["scenario"])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>relay-loadtest: {escape(scenario)}</title><style>{CSS}</style></head><body>",
        f"<h1>relay-loadtest — {escape(scenario)}</h1>",
        f"<p>{escape(report.created)} · <code>{escape(' '.join(report.command))}</code></p>",
        "<p>"
        + " · ".join(f"{escape(name)}: {escape(run.target)}" for name, run in runs.items())
        + "</p>",
    ]
    if report.ratios_to_baseline:
        parts.append(
            "<h2>Relay ÷ baseline forwarder</h2>" + _table(list(report.ratios_to_baseline.items()))
        )
    parts.append("<h2>Ledger, throughput, processes</h2>" + _runs_table(runs, scenario))
    parts.append("<h2>Latency</h2>" + _latency_table(runs))
    bucket = float(w["bucket"])
    series = [RunSeries.of(name, run, bucket) for name, run in runs.items()]
    parts.append("<h2>Over time</h2>")
    parts += [_figure(chart) for chart in time_charts(series)]
    parts.append("<h2>Distributions</h2>")
    parts += [_distributions(name, run) for name, run in runs.items()]
    parts.append(_max_throughput(runs))
    parts.append(_workload(w))
    env = report.environment
    parts.append("<h2>Environment</h2><pre>" + escape(json.dumps(env, indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Report, out_dir: Path) -> Path:
    path = out_dir / "report.html"
    path.write_text(render(report), encoding="utf-8")
    return path
