"""Seconds from `git clone` to a relay answering `/healthz`, through the README's first command.

    python benchmarks/clone_to_serving.py --runs 3 [--no-pip-cache] [--repo PATH]

Each run clones the repository (default: this checkout) into a new temporary folder, runs
`make run` there (a fresh virtual environment with the runtime lock only) on a free port, and
stops the clock when `GET /healthz` answers. Prints each run and the median. With
`--no-pip-cache` pip downloads every wheel again. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

READY_LIMIT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def one_run(repo: Path, no_pip_cache: bool) -> float:
    port = free_port()
    env = {**os.environ, "RELAY_PORT": str(port)}
    if no_pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    with tempfile.TemporaryDirectory(prefix="relay-clone-") as folder:
        started = time.monotonic()
        subprocess.run(["git", "clone", "-q", str(repo), folder], check=True)
        make = subprocess.Popen(
            ["make", "run"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while not healthy(port):
                if make.poll() is not None:
                    raise SystemExit(f"make run exited with {make.returncode}")
                if time.monotonic() - started > READY_LIMIT_S:
                    raise SystemExit("the relay did not answer in time")
                time.sleep(0.05)  # polling an external process; nothing to wait on
            return time.monotonic() - started
        finally:
            os.killpg(make.pid, signal.SIGTERM)
            make.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-pip-cache", action="store_true")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    seconds = []
    for run in range(1, args.runs + 1):
        seconds.append(one_run(args.repo, args.no_pip_cache))
        print(f"run {run}: clone -> serving {seconds[-1]:.1f} s", flush=True)
    print(f"median {statistics.median(seconds):.1f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
