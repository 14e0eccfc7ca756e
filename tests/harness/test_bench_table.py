"""`make bench`'s table and options (benchmarks/bench.py), without running a relay."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

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
