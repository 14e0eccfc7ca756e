"""The harness against a live relay, through its real command line, plus `compare`.

One short `steady` run (10 devices, 100 msg/s, 3 s) against a relay on the
embedded store, with the baseline forwarder, checks the ledger of both runs
and that both report files are written with their plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.support import REPO_ROOT, RelayProcess, stop_relays

from loadtest.compare import compare, format_rows
from loadtest.figures import Latencies, Latency, RunResult, Throughput
from loadtest.ledger import Counts
from loadtest.report import Report, load

from . import synthetic

RUN_TIMEOUT = 90


@pytest.fixture
def live_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = RelayProcess(tmp_path / "relay-data").start()
    yield relay
    problems = stop_relays([relay])
    assert not problems, problems


# A proxy that is not there, named the ways websockets and urllib read: the harness must
# reach the relay under test directly, never through the environment's proxy.
ABSENT_PROXY = "http://127.0.0.1:9"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def _loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    """`relay-loadtest ARGS` from this checkout, with no RELAY_* setting of the caller's and
    an absent proxy in the environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RELAY_") and k.lower() not in (*PROXY_VARIABLES, "no_proxy")
    }
    env.update({name.upper(): ABSENT_PROXY for name in PROXY_VARIABLES})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def _assert_clean(run: RunResult, expected: int) -> None:
    """Every scheduled message was sent once, answered ok and delivered once; nothing else."""
    c = run.counts
    assert c.scheduled == expected, c
    assert c.sent == c.ok == c.delivered == expected, c
    assert c.lost == 0, c
    assert c.duplicated == 0, c
    assert c.delivered_after_ack == 0, c
    assert c.unanswered == 0 and c.unexpected == 0, c
    assert c.errors == 0 and c.errors_by_code == {}, c
    assert run.connection_errors == {}, run.connection_errors
    assert run.latency_ms.delivery.count == expected
    assert run.latency_ms.ok.count == expected
    # The series cover the measured seconds; a delivery just after the last one is only counted.
    assert 0.9 * expected <= sum(v or 0.0 for v in run.series.delivered_per_s) <= expected


def test_steady_with_baseline_writes_clean_reports(
    live_relay: RelayProcess, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    done = _loadtest(
        "steady",
        "--url",
        live_relay.url,
        "--devices",
        "10",
        "--rate",
        "100",
        "--duration",
        "3",
        "--size",
        "100",
        "--procs",
        "2",
        "--baseline",
        "--check",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = load(out / "report.json")
    assert report.workload["scenario"] == "steady"
    assert report.environment["cores"] == os.cpu_count()
    assert set(report.runs) == {"relay", "baseline"}
    # 100 msg/s for 3 s, scheduled in advance: exactly 300 sends in each run.
    _assert_clean(report.runs["relay"], 300)
    _assert_clean(report.runs["baseline"], 300)
    assert (report.runs["relay"].server.rss_peak_mb or 0.0) > 0
    assert report.runs["relay"].generator.procs == 2
    assert report.ratios_to_baseline is not None
    assert report.ratios_to_baseline["delivered_per_s"] == pytest.approx(1.0, rel=0.05)

    page = (out / "report.html").read_text(encoding="utf-8")
    # Five time-series charts with both runs on the same axes, a latency histogram per run.
    assert page.count("<svg") >= 7
    assert 'data-name="relay sent"' in page and 'data-name="baseline sent"' in page
    assert "No errors" in page
    for title in (
        "Messages per second",
        "Delivery latency percentiles",
        "Delivery latency histogram",
        "Connections",
        "Errors per second",
    ):
        assert title in page
    # Self-contained: nothing to fetch (no scripts, stylesheets or images by URL).
    assert "<script" not in page and "<link" not in page and " src=" not in page

    compared = _loadtest("compare", str(out / "report.json"), str(out / "report.json"))
    assert compared.returncode == 0, compared.stderr
    assert "delivered msg/s" in compared.stdout


def test_steady_with_end_to_end_ciphertext(live_relay: RelayProcess, tmp_path: Path) -> None:
    """`--e2e`: sessions set up in advance, every body sealed and opened (no decrypt failure)."""
    out = tmp_path / "e2e"
    done = _loadtest(
        "steady",
        "--url",
        live_relay.url,
        "--devices",
        "6",
        "--rate",
        "60",
        "--duration",
        "2",
        "--size",
        "200",
        "--e2e",
        "--check",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = load(out / "report.json")
    assert report.workload["e2e"] is True
    _assert_clean(report.runs["relay"], 120)


def test_fanout_multi_measures_each_form_of_a_group_message(
    live_relay: RelayProcess, tmp_path: Path
) -> None:
    """`fanout --multi`: every form sent, answered and delivered to every member device,
    with the relay's CPU read around each block."""
    out = tmp_path / "multi"
    done = _loadtest(
        "fanout",
        "--multi",
        "--url",
        live_relay.url,
        "--group",
        "3",
        "--member-devices",
        "2",
        "--rate",
        "20",
        "--duration",
        "2",
        "--size",
        "300",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "multi.json").read_text(encoding="utf-8"))
    forms = result["forms"]
    assert set(forms) == {"sends", "multi-shared", "multi-per-device"}
    for figures in forms.values():
        assert figures["messages"] >= 5, forms
        assert figures["relay_cpu_ms_per_message"] >= 0
        assert figures["ok_ms_p50"] is not None and figures["delivered_ms_p50"] is not None
    # One shared payload against one body per device: the shared frame is the smallest.
    sizes = {form: figures["bytes_sent_per_message"] for form, figures in forms.items()}
    assert sizes["multi-shared"] < sizes["multi-per-device"] <= sizes["sends"], sizes
    assert "relay_cpu_ms_per_message" in done.stdout


def _report(delivered: float, p99: float, lost: int, python: str) -> Report:
    w = synthetic.workload()
    run = dataclasses.replace(
        synthetic.run(0.001, 30.0, w.url, w),
        throughput=Throughput(
            target_rate=2000.0,
            sent_per_s=delivered,
            delivered_per_s=delivered,
            measured_seconds=5.0,
        ),
        latency_ms=Latencies(
            delivery=Latency(count=100, p50=1.0, p99=p99), ok=Latency(count=100, p50=2.0)
        ),
        counts=Counts(sent=100, delivered=100 - lost, lost=lost),
    )
    return Report(
        created="2026-01-01T00:00:00+00:00",
        command=("relay-loadtest", "steady"),
        environment={"python": python, "cores": 2},
        workload={"scenario": "steady", "rate": 2000.0},
        runs={"relay": run},
    )


def test_compare_lists_changed_metrics_and_environment() -> None:
    a = _report(1000.0, 10.0, 0, "3.11.9")
    b = _report(1500.0, 5.0, 2, "3.12.1")
    rows = {(r.section, r.name): r for r in compare(a, b)}
    assert rows[("relay", "delivered msg/s")].change == pytest.approx(0.5)
    assert rows[("relay", "delivery p99 ms")].change == pytest.approx(-0.5)
    assert rows[("relay", "delivery p50 ms")].change == pytest.approx(0.0)
    assert rows[("relay", "lost")].a == 0 and rows[("relay", "lost")].b == 2
    assert rows[("relay", "lost")].change is None  # no relative change from zero
    assert ("environment", "python") in rows
    assert ("environment", "cores") not in rows  # equal fields are not listed
    assert ("relay", "handshake p99 ms") not in rows  # absent from both
    text = format_rows(compare(a, b))
    assert "+50.0%" in text and "-50.0%" in text and "3.12.1" in text
