"""Every seed and every recorded crash of the fuzz targets, replayed through the target's contract.

Runs without atheris: the contracts are plain functions. Each input must also finish within a
time and memory bound, so an input that once made a target hang or allocate without bound
stays fixed.
"""

from __future__ import annotations

import importlib
import time
import tracemalloc
from pathlib import Path

import pytest

from tests.fuzz import TARGETS

HERE = Path(__file__).parent
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 32 * 1024 * 1024


def _inputs() -> list[tuple[str, Path]]:
    found = []
    for target in TARGETS:
        for kind in ("corpus", "regressions"):
            directory = HERE / kind / target
            if directory.is_dir():
                found += [(target, path) for path in sorted(directory.iterdir())]
    return found


INPUTS = _inputs()


def test_every_target_has_a_seed_corpus() -> None:
    for target in TARGETS:
        assert len(list((HERE / "corpus" / target).iterdir())) >= 10, target


@pytest.mark.parametrize(
    ("target", "path"), INPUTS, ids=[f"{t}/{p.parent.parent.name}/{p.name}" for t, p in INPUTS]
)
def test_input_keeps_the_contract(target: str, path: Path) -> None:
    check = importlib.import_module(f"tests.fuzz.{target}").check
    data = path.read_bytes()
    check(data)  # the first call also builds the target's cached keys and sessions
    tracemalloc.start()
    started = time.perf_counter()
    try:
        check(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"{elapsed:.2f} s"
    assert peak < MAX_PEAK_BYTES, f"{peak} bytes at peak"
