"""`make bench`'s table and options (benchmarks/bench.py), without running a relay."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from loadtest.figures import RunResult

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The script as a module (it imports its sibling send_paths.py the way it runs)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_table_gives_medians_per_store_and_the_line_to_reach(bench: ModuleType) -> None:
    figures = bench.Figures()
    for value in (900.0, 1500.0, 1200.0):
        figures.add("embedded", "online", value)
    figures.add("embedded", "online_ratio", 0.2)
    figures.add("embedded", "online_ratio", 0.4)
    figures.add("production", "handshakes", None)  # nothing passed in that run
    figures.add("production", "drain", 21000.0)
    text = bench.table(figures, ["embedded", "production"], 3, "200 devices x 100 stored")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
    assert rows["online 1:1 max, relay (p99 <= 50 ms)"].endswith("| 1,200 msg/s | — | — |")
    assert rows["relay / forwarder"].endswith("| 0.30 | — | >= 0.5 |")
    assert rows["drain, 200 devices x 100 stored"].endswith("| — | 21,000 msg/s | >= 20,000 |")
    assert rows["handshakes/s with p99 < 100 ms"].endswith("| — | — | >= 3,000 |")
    assert text.splitlines()[0] == "| figure (median of 3) | embedded | production | must reach |"


def test_options_are_checked(bench: ModuleType) -> None:
    args = bench.parser().parse_args(["--stores", "embedded", "--connect-rates", "3000,1000"])
    assert args.stores == ["embedded"]
    assert args.connect_rates == [1000, 3000]
    with pytest.raises(SystemExit):
        bench.parser().parse_args(["--stores", "sqlite"])
    with pytest.raises(SystemExit):
        bench.parser().parse_args(["--connect-rates", "0"])


def _storm(
    p99: float | None, *, count: int = 1500, errors: int = 0, cpu: float | None = 1.5
) -> RunResult:
    """A connect-storm run as a report holds it: `count` handshakes, their p99, the CPU."""
    return RunResult.from_json(
        {
            "target": "relay",
            "counts": {},
            "connection_errors": {"connect:InvalidMessage": errors} if errors else {},
            "latency_ms": {"handshake": {"count": count, "p99": p99}},
            "throughput": {},
            "generator": {
                "procs": 2,
                "cpu_seconds": 0.75,
                "cpu_percent_of_one_core": 50.0,
                "wall_seconds": 3.0,
                "setup_seconds": 2.0,
            },
            "server": {"cpu_seconds": cpu},
        }
    )


def test_a_sweep_keeps_the_last_rate_passed_and_the_first_rates_cpu(bench: ModuleType) -> None:
    sweep = bench.Sweep()
    sweep.record(1000, _storm(40.0, cpu=1.5), first=True)
    sweep.record(2000, _storm(90.0, cpu=9.0), first=False)
    assert (sweep.rate, sweep.p99, sweep.passing) == (2000.0, 90.0, True)
    sweep.record(3000, _storm(140.0), first=False)
    assert (sweep.rate, sweep.p99, sweep.passing) == (2000.0, 90.0, False)
    # CPU per handshake, µs, from the first rate's storm only
    assert sweep.cpu_us == pytest.approx(1000.0)
    assert sweep.generator_cpu_us == pytest.approx(500.0)


def test_a_sweep_fails_on_a_lost_connection_and_never_passes_again(bench: ModuleType) -> None:
    sweep = bench.Sweep()
    sweep.record(1000, _storm(20.0, errors=1, cpu=None), first=True)
    assert (sweep.rate, sweep.passing, sweep.cpu_us) == (None, False, None)
    sweep.record(2000, _storm(20.0), first=False)
    assert sweep.rate is None


def test_parts_are_checked(bench: ModuleType) -> None:
    assert bench.parser().parse_args([]).parts == ["online", "paths", "drain", "handshakes"]
    assert bench.parser().parse_args(["--parts", "handshakes"]).parts == ["handshakes"]
    with pytest.raises(SystemExit):
        bench.parser().parse_args(["--parts", "handshake"])


def test_table_shows_the_rows_of_the_parts_measured(bench: ModuleType) -> None:
    figures = bench.Figures()
    figures.add("embedded", "handshake_cpu", 1000.0)
    text = bench.table(figures, ["embedded"], 1, "200 devices x 100 stored", ["handshakes"])
    labels = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()[2:]]
    assert "relay CPU per handshake, first rate" in labels
    assert "handshakes/s with p99 < 100 ms, bare forwarder" in labels
    assert not any(label.startswith(("online", "drain", "stored")) for label in labels)
    assert "| relay CPU per handshake, first rate | 1,000 µs | — |" in text
