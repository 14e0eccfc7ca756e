"""relay-loadtest against a wss:// relay verified with --ca-file (a throwaway CA)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.certs import Authority, relay_with_tls
from e2e.support import RelayProcess

from loadtest.report import load

from .test_loadtest import _loadtest


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "tls", "loadtest")


@pytest.fixture
def tls_relay(tmp_path: Path, ca: Authority) -> Iterator[RelayProcess]:
    with relay_with_tls(tmp_path, ca) as relay:
        yield relay


def test_steady_over_wss_with_a_ca_file(
    tls_relay: RelayProcess, ca: Authority, tmp_path: Path
) -> None:
    assert tls_relay.url.startswith("wss://")
    out = tmp_path / "report"
    done = _loadtest(
        "steady",
        "--url",
        tls_relay.url,
        "--ca-file",
        str(ca.ca_file),
        "--devices",
        "6",
        "--rate",
        "60",
        "--duration",
        "2",
        "--size",
        "100",
        "--procs",
        "2",
        "--check",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run = load(out / "report.json").runs["relay"]
    counts = run.counts
    assert counts.sent == counts.ok == counts.delivered == 120, counts
    assert counts.lost == counts.duplicated == counts.errors == 0, counts
    assert run.connection_errors == {}
    # The server's memory came from /metrics over https, verified with the same CA file.
    assert (run.server.rss_peak_mb or 0.0) > 0


def _unwrapped(done: subprocess.CompletedProcess[str]) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join((done.stdout + done.stderr).split())


def test_ca_file_problems_are_named(tls_relay: RelayProcess, tmp_path: Path) -> None:
    absent = tmp_path / "absent.pem"
    done = _loadtest("steady", "--url", tls_relay.url, "--ca-file", str(absent), "--devices", "2")
    assert done.returncode == 2
    assert "absent.pem: cannot read it" in _unwrapped(done)
    plain = tls_relay.url.replace("wss://", "ws://")
    done = _loadtest("steady", "--url", plain, "--ca-file", str(absent), "--devices", "2")
    assert done.returncode == 2
    assert "for wss:// URLs" in _unwrapped(done)
