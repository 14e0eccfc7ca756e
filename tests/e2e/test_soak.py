"""The short version of `make soak`: the same script, a few thousand envelopes through node
kills and a PostgreSQL and a Redis restart (tests/soak/run.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


def test_envelopes_through_kills_and_restarts_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.soak.run",
            "--envelopes",
            "2400",
            "--rate",
            "120",
            "--kills",
            "2",
            "--devices",
            "40",
            "--grace",
            "60",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert (out / "soak.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "soak.json").read_text())
    assert summary["checks"] == {
        "envelopes": True,
        "kills": True,
        "postgres_restart": True,
        "redis_restart": True,
        "lost": True,
        "delivered_after_confirmed_ack": True,
        "every_send_answered": True,
    }, (summary["counts"], result.stdout[-3000:])
    assert [f["kind"] for f in summary["faults"]].count("kill") == 2
    assert all(f["healed_s"] is not None for f in summary["faults"])
    assert result.returncode == 0
    assert (out / "report.html").exists()
