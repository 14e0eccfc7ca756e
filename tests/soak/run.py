"""Envelopes through faults: `python -m tests.soak.run [--envelopes N] [--kills K] ...`.

Three production relay nodes share a private PostgreSQL cluster and a private Redis server
(both thrown away afterwards). `relay-loadtest faults` drives them: devices spread over the
nodes, each going offline and coming back now and then, moving to the next node when theirs
dies, retrying unanswered sends with the same id and nonce. Meanwhile this script SIGKILLs a
random node `--kills` times (restarting it at once), restarts PostgreSQL once (a third of the
way) and Redis once (two thirds of the way: without persistence, so presence and replay
records are gone), and times how long each fault took to heal (every node ready again).

At the end the load test's ledger must show 0 lost, 0 delivered after a confirmed ack and
every send answered; the script prints the figures, writes `soak.json` beside the load
test's `report.json`/`report.html`, and exits 1 when a check failed. `make soak` runs the
full size (1,000,000 envelopes, 20 kills); `tests/e2e/test_soak.py` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.e2e.stores import master_key_env
from tests.e2e.throwaway import PgCluster, RedisServer, free_port, migrate

NODES = 3
READY_TIMEOUT_S = 60.0


@dataclass(slots=True)
class Fault:
    kind: str  # "kill", "postgres_restart", "redis_restart"
    target: str
    at_s: float  # seconds after the traffic started
    healed_s: float | None = None  # fault → every node ready again


@dataclass(slots=True)
class Summary:
    envelopes: int
    counts: dict[str, object]
    faults: list[Fault] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    report: str = ""

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


class Node:
    """One relay process on a fixed port, so devices find it again after a restart."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = env
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "relay",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--node-id",
                    self.name,
                    "--rate-requests",
                    "1000000",
                    "--rate-requests-burst",
                    "1000000",
                    "--max-registrations-per-address",  # every device registers from here
                    "0",
                    "--log-level",
                    "WARNING",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` (a readiness probe of another process) until true; the seconds taken."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{what} not within {timeout_s:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def fault_plan(duration_s: float, kills: int, rng: random.Random) -> list[tuple[float, str]]:
    """When each fault happens: kills evenly spread over the traffic (avoiding the database
    restarts' instants), PostgreSQL at a third, Redis at two thirds."""
    plan = [(duration_s / 3, "postgres_restart"), (2 * duration_s / 3, "redis_restart")]
    for i in range(kills):
        at = duration_s * (i + 0.5) / (kills + 1) + rng.uniform(-0.2, 0.2)
        plan.append((at, "kill"))
    return sorted(plan)


class Faults(threading.Thread):
    """Injects the planned faults while the load test runs and times each recovery."""

    def __init__(
        self,
        nodes: list[Node],
        pg: PgCluster,
        redis_server: RedisServer,
        plan: list[tuple[float, str]],
        rng: random.Random,
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.nodes = nodes
        self.pg = pg
        self.redis = redis_server
        self.plan = plan
        self.rng = rng
        self.t0 = 0.0
        self.done: list[Fault] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            for at, kind in self.plan:
                if self.stopping.wait(max(0.0, self.t0 + at - time.time())):
                    return
                self.done.append(self._inject(kind))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _inject(self, kind: str) -> Fault:
        started = time.time()
        if kind == "kill":
            node = self.rng.choice(self.nodes)
            fault = Fault(kind, node.name, started - self.t0)
            node.kill()
            node.start()
        elif kind == "postgres_restart":
            fault = Fault(kind, "postgresql", started - self.t0)
            self.pg.stop("fast")
            self.pg.start()
        else:
            fault = Fault(kind, "redis", started - self.t0)
            self.redis.kill()
            self.redis.start()
        wait_until(
            lambda: all(n.ready() for n in self.nodes), READY_TIMEOUT_S, f"recovery from {kind}"
        )
        fault.healed_s = round(time.time() - started, 3)
        print(
            f"soak: {kind} of {fault.target} at {fault.at_s:.1f} s, healed in "
            f"{fault.healed_s:.2f} s",
            flush=True,
        )
        return fault


def run(args: argparse.Namespace) -> Summary:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    duration = args.envelopes / args.rate
    pg = PgCluster().init()
    redis_server = RedisServer()
    nodes: list[Node] = []
    try:
        pg.start()
        redis_server.start()
        database = pg.url
        migrate(database)
        env = {
            "RELAY_DATABASE_URL": database,
            "RELAY_REDIS_URL": redis_server.url,
            "RELAY_REDIS_PREFIX": "soak:",
            **master_key_env(),
        }
        logs = Path(tempfile.mkdtemp(prefix="relay-soak-logs-"))
        nodes = [Node(f"soak-{i + 1}", env, logs) for i in range(NODES)]
        for node in nodes:
            node.start()
        for node in nodes:
            wait_until(node.ready, READY_TIMEOUT_S, f"{node.name} ready")
        faults = Faults(nodes, pg, redis_server, fault_plan(duration, args.kills, rng), rng)
        command = [
            sys.executable,
            "-m",
            "loadtest",
            "faults",
            "--url",
            nodes[0].url,
            *(a for n in nodes[1:] for a in ("--also-url", n.url)),
            "--devices",
            str(args.devices),
            "--rate",
            str(args.rate),
            "--duration",
            f"{duration:.3f}",
            "--size",
            str(args.size),
            "--pairing",
            "random",
            "--offline-share",
            str(args.offline_share),
            "--away",
            str(args.away),
            "--grace",
            str(args.grace),
            "--procs",
            str(args.procs),
            "--out",
            str(out),
        ]
        loadtest = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # the progress lines, the first at the start instant
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert loadtest.stdout is not None
        for line in loadtest.stdout:
            sys.stdout.write(line)
            if faults.t0 == 0.0 and " msg/s " in line:
                faults.t0 = time.time()
                faults.start()
        code = loadtest.wait()
        faults.stopping.set()
        if faults.is_alive():
            faults.join(timeout=READY_TIMEOUT_S + 30)
        if faults.error is not None:
            raise RuntimeError(f"a fault could not be injected: {faults.error}")
        if code not in (0, 1):
            raise RuntimeError(f"relay-loadtest failed with exit code {code}")
        report = json.loads((out / "report.json").read_text())
        counts = report["runs"]["relay"]["counts"]
        summary = Summary(
            envelopes=int(counts["scheduled"]),
            counts=counts,
            faults=faults.done,
            report=str(out / "report.html"),
        )
        kinds = [f.kind for f in faults.done]
        summary.checks = {
            "envelopes": summary.envelopes >= args.envelopes,
            "kills": kinds.count("kill") >= args.kills,
            "postgres_restart": "postgres_restart" in kinds,
            "redis_restart": "redis_restart" in kinds,
            "lost": counts["lost"] == 0,
            "delivered_after_confirmed_ack": counts.get("delivered_after_confirmed_ack") == 0,
            "every_send_answered": counts["unanswered"] == 0
            and counts["sent"] == counts["scheduled"],
        }
        return summary
    finally:
        for node in nodes:
            node.stop()
        redis_server.kill()
        pg.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envelopes", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=800.0, help="envelopes per second")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--offline-share", type=float, default=0.2)
    parser.add_argument("--away", type=float, default=3.0)
    parser.add_argument("--grace", type=float, default=120.0)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("test-artifacts/soak"))
    args = parser.parse_args(argv)
    summary = run(args)
    (args.out / "soak.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    print(json.dumps({"checks": summary.checks, "counts": summary.counts}, indent=2))
    healed = [f.healed_s for f in summary.faults if f.healed_s is not None]
    if healed:
        print(f"soak: {len(healed)} faults, healed in {min(healed):.2f}-{max(healed):.2f} s")
    print(f"soak: {'passed' if summary.passed else 'FAILED'}; report {summary.report}")
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
