"""Two source trees of the relay side by side: the same load-test command against each, rounds
interleaved so the machine's noise falls on both alike.

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE [--rounds 4] [--rate 2500] [--duration 8]

Make OLD_TREE with `git archive REV | tar -x -C DIR`. Each run starts a fresh relay from that
tree (embedded store, its own data directory; the tree is put first on PYTHONPATH, so this
checkout's virtual environment supplies the dependencies and the load generator), runs
`relay-loadtest steady --baseline` against it, and reads the report: the relay's CPU per
delivered message, its delivered rate as a ratio to the bare forwarder's in the same run, the
delivery p99 and the messages lost. Prints each run and the medians. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class Figures:
    cpu_us_per_message: float
    ratio: float
    delivery_p99_ms: float
    lost: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(port: int, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a process we started; nothing to wait on
    raise SystemExit("the relay did not start")


def one_run(tree: Path, rate: int, duration: float) -> Figures:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="relay-ab-") as folder:
        # Every device registers from here: no registration budget (a variable, which a
        # tree without that setting ignores).
        env = {**os.environ, "PYTHONPATH": str(tree), "RELAY_MAX_REGISTRATIONS_PER_ADDRESS": "0"}
        serve = [str(BIN / "python"), "-m", "relay", "serve", "--port", str(port)]
        relay = subprocess.Popen(
            [*serve, "--data-dir", f"{folder}/data"],
            env=env,
            cwd=tree,  # `python -m` puts the working directory first, before PYTHONPATH
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(port)
            url = f"ws://127.0.0.1:{port}/v1/ws"
            workload = ["--devices", "100", "--rate", str(rate), "--duration", str(duration)]
            output = ["--size", "1024", "--baseline", "--out", f"{folder}/report"]
            subprocess.run(
                [str(BIN / "relay-loadtest"), "steady", "--url", url, *workload, *output],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        finally:
            relay.terminate()
            relay.wait()
        report = json.loads(Path(folder, "report", "report.json").read_text())
    relay_run, baseline = report["runs"]["relay"], report["runs"]["baseline"]
    delivered = max(1, relay_run["counts"]["delivered"])
    return Figures(
        cpu_us_per_message=relay_run["server"]["cpu_seconds"] / delivered * 1e6,
        ratio=relay_run["throughput"]["delivered_per_s"]
        / baseline["throughput"]["delivered_per_s"],
        delivery_p99_ms=relay_run["latency_ms"]["delivery"]["p99"],
        lost=relay_run["counts"]["lost"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rate", type=int, default=2500)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()
    runs: dict[str, list[Figures]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, tree in (("old", args.old), ("new", args.new)):
            figures = one_run(tree.resolve(), args.rate, args.duration)
            runs[name].append(figures)
            print(
                f"{name}: {figures.cpu_us_per_message:.0f} µs CPU/msg, ratio {figures.ratio:.3f}, "
                f"delivery p99 {figures.delivery_p99_ms:.0f} ms, lost {figures.lost}",
                flush=True,
            )
    for name, figures_list in runs.items():
        cpu = statistics.median(f.cpu_us_per_message for f in figures_list)
        ratio = statistics.median(f.ratio for f in figures_list)
        print(f"{name} median: {cpu:.0f} µs CPU/msg, ratio to the bare forwarder {ratio:.3f}")


if __name__ == "__main__":
    main()
