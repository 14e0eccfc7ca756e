"""`report.html`: one self-contained page (inline SVG and CSS, nothing fetched) per report."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from loadtest.svg import Line, bar_chart, line_chart

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1000px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.bad { color: #b00; font-weight: bold; } .good { color: #070; }
svg { display: block; margin: 0.5em 0 1.5em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return escape(str(v))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _counts_table(counts: dict[str, Any]) -> str:
    rows = []
    for k, v in counts.items():
        if k == "errors_by_code":
            continue
        bad = k in (
            "lost",
            "duplicated",
            "delivered_after_ack",
            "unanswered",
            "unexpected",
            "errors",
        )
        cls = ' class="bad"' if bad and v else ""
        rows.append(f"<tr><td>{escape(k)}</td><td{cls}>{_fmt(v)}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _latency_table(latency: dict[str, dict[str, float]]) -> str:
    cols = ("count", "mean", "p50", "p90", "p99", "p99.9", "max")
    head = "".join(f"<th>{c}</th>" for c in ("latency (ms)", *cols))
    rows = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{_fmt(s.get(c))}</td>" for c in cols)
        + "</tr>"
        for name, s in latency.items()
        if s.get("count")
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _run_section(name: str, run: dict[str, Any]) -> str:
    s = run["series"]
    t = s["t_s"]
    out = [f"<h2>{escape(name)}: {escape(run['target'])}</h2>"]
    out.append("<h3>Ledger</h3>" + _counts_table(run["counts"]))
    out.append("<h3>Latency</h3>" + _latency_table(run["latency_ms"]))
    thr = run["throughput"]
    gen, srv = run["generator"], run["server"]
    out.append(
        _table(
            [
                ("target rate (msg/s)", thr["target_rate"]),
                ("sent (msg/s)", thr["sent_per_s"]),
                ("delivered (msg/s)", thr["delivered_per_s"]),
                ("generator processes", gen["procs"]),
                ("generator CPU (% of one core)", gen["cpu_percent_of_one_core"]),
                ("server CPU (s)", srv["cpu_seconds"]),
                (
                    "server RSS start / peak (MiB)",
                    f"{_fmt(srv['rss_start_mb'])} / {_fmt(srv['rss_peak_mb'])}",
                ),
                *(
                    (k, v)
                    for k, v in thr.items()
                    if k not in ("target_rate", "sent_per_s", "delivered_per_s")
                ),
                *((f"mark: {k} (s)", v) for k, v in run.get("marks_s", {}).items()),
            ]
        )
    )
    out.append(
        line_chart(
            "Messages per second",
            t,
            [
                Line("sent", s["sent_per_s"]),
                Line("ok", s["ok_per_s"], dashed=True),
                Line("delivered", s["delivered_per_s"]),
            ],
            x_label="time since start (s)",
            y_label="messages / s",
        )
    )
    out.append(
        line_chart(
            "Delivery latency percentiles (scheduled send → delivery)",
            t,
            [Line("p50", s["p50_ms"]), Line("p99", s["p99_ms"]), Line("p99.9", s["p999_ms"])],
            x_label="time since start (s)",
            y_label="latency (ms, log scale)",
            log_y=True,
        )
    )
    hist = run["histogram_ms"]
    out.append(
        bar_chart(
            "Delivery latency histogram",
            [f"{b[0]:.3g}" for b in hist],
            [b[1] for b in hist],
            x_label="latency up to (ms)",
            y_label="messages",
        )
    )
    out.append(
        line_chart(
            "Connections",
            t,
            [
                Line("open connections", s["connections"]),
                Line("handshakes / s", s["handshakes_per_s"]),
            ],
            x_label="time since start (s)",
            y_label="connections",
        )
    )
    errors = {**run["counts"]["errors_by_code"], **run["connection_errors"]}
    out.append(
        line_chart(
            "Errors per second",
            t,
            [Line("errors", s["errors_per_s"], color="#d62728")],
            x_label="time since start (s)",
            y_label="errors / s",
        )
    )
    if errors:
        out.append(
            bar_chart(
                "Errors by code",
                list(errors),
                [float(v) for v in errors.values()],
                x_label="error code (closed:N = connection closed with code N)",
                y_label="count",
            )
        )
    else:
        out.append("<p class='good'>No errors: every request answered ok, no connection lost.</p>")
    if any(v is not None for v in s["server_rss_mb"]):
        out.append(
            line_chart(
                "Server memory and CPU",
                t,
                [
                    Line("RSS (MiB)", s["server_rss_mb"]),
                    Line("CPU (% of one core)", s["server_cpu_percent"]),
                ],
                x_label="time since start (s)",
                y_label="MiB  /  % CPU",
            )
        )
    return "\n".join(out)


def render(report: dict[str, Any]) -> str:
    w = report["workload"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>relay-loadtest: {escape(w['scenario'])}</title><style>{CSS}</style></head><body>",
        f"<h1>relay-loadtest — {escape(w['scenario'])}</h1>",
        f"<p>{escape(report['created'])} · <code>{escape(' '.join(report['command']))}</code></p>",
    ]
    ratios = report.get("ratios_to_baseline")
    if ratios:
        parts.append("<h2>Relay ÷ baseline forwarder</h2>")
        parts.append(_table(list(ratios.items())))
    for name, run in report["runs"].items():
        if name.endswith("max_throughput"):
            continue
        parts.append(_run_section(name, run))
        if "max_throughput" in run:
            steps = sorted(run["max_throughput"]["steps"], key=lambda st: st["rate"])
            rates = [st["rate"] for st in steps]
            parts.append(
                "<h3>Maximum throughput search</h3>"
                + _table(
                    [("max rate passing (msg/s)", run["max_throughput"]["max_rate"])]
                    + [
                        (f"step {st['rate']:g} msg/s", "pass" if st["passed"] else "fail")
                        for st in steps
                    ]
                )
                + line_chart(
                    "Delivered rate by target rate",
                    rates,
                    [
                        Line("delivered", [st["delivered_per_s"] for st in steps]),
                        Line("target", rates, dashed=True),
                    ],
                    x_label="target rate (msg/s)",
                    y_label="delivered msg/s",
                )
                + line_chart(
                    "Delivery p99 by target rate",
                    rates,
                    [Line("p99", [st["p99_ms"] for st in steps], color="#d62728")],
                    x_label="target rate (msg/s)",
                    y_label="p99 (ms, log scale)",
                    log_y=True,
                )
            )
    parts.append("<h2>Workload</h2><pre>" + escape(json.dumps(w, indent=2)) + "</pre>")
    env = report["environment"]
    parts.append("<h2>Environment</h2><pre>" + escape(json.dumps(env, indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "report.html"
    path.write_text(render(report), encoding="utf-8")
    return path
