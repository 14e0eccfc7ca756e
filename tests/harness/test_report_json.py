"""`report.json` written from the typed results keeps the format of earlier versions.

The files under `data/` were written by the version that built the report as
nested dicts, from the same synthetic runs as below (a steady run with its
baseline, a connect storm, and two maximum-throughput searches). The typed
results must write them again key for key, read them back, and `compare` them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import report
from loadtest.cli import main
from loadtest.compare import compare
from loadtest.figures import RunResult
from loadtest.maxrate import Thresholds, find_max
from loadtest.report import Report
from loadtest.workload import Scenario, Workload

from . import synthetic

DATA = Path(__file__).parent / "data"
# Figures and options added since those files were written: the only keys they lack.
ADDED = frozenset(
    {
        "also_urls",
        "offline_share",
        "away",
        "delivered_after_confirmed_ack",
        "retried_after_confirmed_ack",
    }
)
CREATED = "2026-12-04T00:00:00+00:00"
NAMES = ("steady", "connect-storm", "find-max")


def _written_before(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"report-v1-{name}.json").read_text("utf-8"))
    return data


def _without_added(data: Any) -> Any:
    """`data` without the keys added since the earlier format (in every nested object)."""
    if isinstance(data, dict):
        return {k: _without_added(v) for k, v in data.items() if k not in ADDED}
    if isinstance(data, list):
        return [_without_added(v) for v in data]
    return data


def _steady() -> Report:
    return synthetic.build()


def _connect_storm() -> Report:
    w = synthetic.workload(Scenario.CONNECT_STORM)
    runs = {"relay": synthetic.run(0.003, 36.0, w.url, w)}
    return report.build({"cores": 2}, w.as_json(), runs, ["relay-loadtest", "connect-storm"])


def _find_max() -> Report:
    w = synthetic.workload()

    def relay(step: Workload) -> RunResult:
        return synthetic.run(0.003 if step.rate <= 150 else 0.5, 36.0, step.url, step)

    def baseline(step: Workload) -> RunResult:
        return synthetic.run(0.001, 28.0, "ws://127.0.0.1:2/v1/ws", step)

    runs = {
        "relay": find_max(w, relay, Thresholds(factor=1.5, refine=1, max_steps=4)),
        "baseline": find_max(w, baseline, Thresholds(factor=1.5, refine=1, max_steps=3)),
    }
    command = ["relay-loadtest", "steady", "--find-max"]
    return report.build({"cores": 2}, w.as_json(), runs, command)


BUILDERS = {"steady": _steady, "connect-storm": _connect_storm, "find-max": _find_max}


@pytest.mark.parametrize("name", NAMES)
def test_the_typed_results_write_the_earlier_format_key_for_key(name: str) -> None:
    written = BUILDERS[name]().as_json()
    assert written["created"]  # a timestamp of now; the stored files carry a fixed one
    written["created"] = CREATED
    assert set(written["workload"]) | set(written["runs"]["relay"]["counts"]) >= ADDED
    # Compared as text: the same keys in the same order, the same numbers (int stays int).
    earlier = json.dumps(_written_before(name), indent=2)
    assert json.dumps(_without_added(written), indent=2) == earlier


@pytest.mark.parametrize("name", NAMES)
def test_an_earlier_report_reads_back_unchanged(name: str) -> None:
    loaded = report.load(DATA / f"report-v1-{name}.json")
    assert _without_added(loaded.as_json()) == _written_before(name)
    assert loaded.runs["relay"].counts.delivered_after_confirmed_ack == 0  # absent: 0


def test_a_written_report_loads_back_equal(tmp_path: Path) -> None:
    rep = _find_max()
    loaded = report.load(report.write(rep, tmp_path))
    assert loaded.as_json() == rep.as_json()
    # Every figure survives but the search's step budget, which the report leaves out.
    assert loaded.runs["baseline"].series == rep.runs["baseline"].series
    assert loaded.runs["relay"].latency_ms == rep.runs["relay"].latency_ms


def test_compare_reads_earlier_reports(capsys: pytest.CaptureFixture[str]) -> None:
    a = report.load(DATA / "report-v1-steady.json")
    b = report.load(DATA / "report-v1-find-max.json")
    rows = {(r.section, r.name): r for r in compare(a, b)}
    assert rows[("relay", "max rate msg/s")].a is None
    assert rows[("relay", "max rate msg/s")].b == 100.0
    assert rows[("relay", "delivery p99 ms")].a == a.runs["relay"].latency_ms.delivery.p99
    assert ("relay ÷ baseline", "max_throughput") in rows
    assert (
        main(
            ["compare", str(DATA / "report-v1-steady.json"), str(DATA / "report-v1-find-max.json")]
        )
        == 0
    )
    assert "max rate msg/s" in capsys.readouterr().out


def test_a_malformed_report_is_refused_by_name(tmp_path: Path) -> None:
    broken = _written_before("steady")
    del broken["runs"]["relay"]["counts"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match="malformed relay-loadtest report"):
        report.load(path)
    assert main(["compare", str(path), str(path)]) == 2
