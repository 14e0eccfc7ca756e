"""`report.html`: one self-contained page (inline SVG and CSS, nothing fetched) per report.

The runs of a report (the relay, and the baseline forwarder with `--baseline`)
share every table and time-series chart, so they are compared on the same axes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from loadtest.html_charts import RunSeries, max_throughput_charts, time_charts
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
    {"lost", "duplicated", "delivered_after_ack", "unanswered", "unexpected", "errors"}
)
LATENCY_COLUMNS = ("count", "mean", "p50", "p90", "p99", "p99.9", "max")
BAD = ' class="bad"'
OWN_ROWS = ("target_rate", "sent_per_s", "delivered_per_s")


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


def _runs_table(runs: Mapping[str, Mapping[str, Any]], scenario: Scenario) -> str:
    """The ledger, throughput, generator and server figures: one column per run."""
    names = list(runs)
    head = "<tr><th>figure</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    rows: list[str] = []

    def row(label: str, values: list[Any], bad: bool = False) -> None:
        cells = "".join(f"<td{BAD if bad and v else ''}>{_fmt(v)}</td>" for v in values)
        rows.append(f"<tr><td>{escape(label)}</td>{cells}</tr>")

    counts = [runs[n]["counts"] for n in names]
    for key in counts[0]:
        if key != "errors_by_code":
            row(key, [c.get(key) for c in counts], bad=key in BAD_COUNTS)
    thr = [runs[n]["throughput"] for n in names]
    if applies(scenario, "rate"):
        row("target rate (msg/s)", [t["target_rate"] for t in thr])
    row("sent (msg/s)", [t["sent_per_s"] for t in thr])
    row("delivered (msg/s)", [t["delivered_per_s"] for t in thr])
    extra = dict.fromkeys(k for t in thr for k in t if k not in OWN_ROWS)
    for key in extra:
        row(key, [t.get(key) for t in thr])
    gen = [runs[n]["generator"] for n in names]
    srv = [runs[n]["server"] for n in names]
    row("generator processes", [g["procs"] for g in gen])
    row("generator CPU (% of one core)", [g["cpu_percent_of_one_core"] for g in gen])
    row("server CPU (s)", [s["cpu_seconds"] for s in srv])
    row(
        "server RSS start / peak (MiB)",
        [f"{_fmt(s['rss_start_mb'])} / {_fmt(s['rss_peak_mb'])}" for s in srv],
    )
    marks = dict.fromkeys(k for n in names for k in runs[n].get("marks_s", {}))
    for key in marks:
        row(f"mark: {key} (s)", [runs[n].get("marks_s", {}).get(key) for n in names])
    return f"<table>{head}{''.join(rows)}</table>"


def _latency_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("latency (ms)", "run", *LATENCY_COLUMNS))
    rows = []
    kinds = dict.fromkeys(k for run in runs.values() for k in run["latency_ms"])
    for kind in kinds:
        for name, run in runs.items():
            s = run["latency_ms"].get(kind, {})
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


def _distributions(name: str, run: Mapping[str, Any]) -> str:
    """A run's latency histogram and its errors by code."""
    hist = run["histogram_ms"]
    out = [
        bar_chart(
            f"Delivery latency histogram: {name}",
            [f"{b[0]:.3g}" for b in hist],
            [b[1] for b in hist],
            x_label="latency up to (ms)",
            y_label="messages",
        )
    ]
    errors = {**run["counts"]["errors_by_code"], **run["connection_errors"]}
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


def _max_throughput(runs: Mapping[str, Mapping[str, Any]]) -> str:
    searches = {n: r["max_throughput"] for n, r in runs.items() if "max_throughput" in r}
    if not searches:
        return ""
    out = ["<h2>Maximum throughput search</h2>"]
    for name, search in searches.items():
        steps = sorted(search["steps"], key=lambda st: st["rate"])
        out.append(
            f"<h3>{escape(name)}</h3>"
            + _table(
                [("max rate passing (msg/s)", search["max_rate"])]
                + [
                    (f"step {st['rate']:g} msg/s", "pass" if st["passed"] else "fail")
                    for st in steps
                ]
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


def render(report: Mapping[str, Any]) -> str:
    w = report["workload"]
    runs: Mapping[str, Mapping[str, Any]] = report["runs"]
    scenario = Scenario(w["scenario"])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>relay-loadtest: {escape(scenario)}</title><style>{CSS}</style></head><body>",
        f"<h1>relay-loadtest — {escape(scenario)}</h1>",
        f"<p>{escape(report['created'])} · <code>{escape(' '.join(report['command']))}</code></p>",
        "<p>"
        + " · ".join(f"{escape(name)}: {escape(run['target'])}" for name, run in runs.items())
        + "</p>",
    ]
    ratios = report.get("ratios_to_baseline")
    if ratios:
        parts.append("<h2>Relay ÷ baseline forwarder</h2>" + _table(list(ratios.items())))
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
    env = report["environment"]
    parts.append("<h2>Environment</h2><pre>" + escape(json.dumps(env, indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: Mapping[str, Any], out_dir: Path) -> Path:
    path = out_dir / "report.html"
    path.write_text(render(report), encoding="utf-8")
    return path
