"""`make bench`: the figures of issue 13 for both stores in a few minutes, as one table.

    python benchmarks/bench.py [--runs 3] [--stores embedded,production]

For each run and each store, a relay of its own on a fresh store (embedded: a new data
directory; production: a new PostgreSQL database and Redis prefix, dropped after) and:

- online 1:1 maximum (100 devices in pairs, 1 KiB, delivery p99 <= 50 ms): `relay-loadtest
  steady --find-max`; the bare forwarder's maximum is searched once per run (`--baseline` with
  the first store) and both stores are divided by it;
- delivery p99 at half the relay's maximum (`relay-loadtest steady`, and the forwarder at the
  same rate);
- stored path / online path (`send_paths.py`: receivers online and acking, then offline);
- drain of `--drain-devices` devices x `--drain-queue` stored messages (`relay-loadtest
  offline-drain`);
- handshakes per second: `relay-loadtest connect-storm` at each of `--connect-rates` until
  the handshake p99 reaches 100 ms or a connection fails; the highest rate that passed. With
  the first store the bare forwarder gets the same sweep (`--baseline`), and the server's and
  the generator's CPU per handshake are read off the first rate's storm: whether a rate can
  be shown on this machine at all (the generator and the server share its cores).

Each figure is printed as it is measured; the table gives the medians over the runs (ratios:
the median of the per-run ratios). A benchmark, not a test: figures vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import send_paths

from loadtest import report
from loadtest.figures import RunResult

BIN = Path(sys.executable).parent
STORES = ("embedded", "production")
PARTS = ("online", "paths", "drain", "handshakes")
ONLINE_P99_MS = 50.0
HANDSHAKE_P99_MS = 100.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: how to read it off the figures, and the line it must reach."""

    key: str
    label: str
    unit: str
    target: str
    part: str  # of PARTS: the measurement it comes from


ROWS = (
    Row("online", "online 1:1 max, relay (p99 <= 50 ms)", "msg/s", "", "online"),
    Row("forwarder", "online 1:1 max, bare forwarder", "msg/s", "", "online"),
    Row("online_ratio", "relay / forwarder", "x", ">= 0.5", "online"),
    Row("half_p99", "delivery p99 at half the relay's max", "ms", "<= 10", "online"),
    Row("half_p99_forwarder", "forwarder delivery p99, same rate", "ms", "", "online"),
    Row("closed_online", "online path, 32 outstanding per sender", "msg/s", "", "paths"),
    Row("closed_online_cpu", "relay CPU per message, online path", "µs", "", "paths"),
    Row("closed_stored", "stored path (recipient offline)", "msg/s", "", "paths"),
    Row("stored_ratio", "stored / online", "x", ">= 0.5", "paths"),
    Row("drain", "drain", "msg/s", ">= 20,000", "drain"),
    Row("handshakes", "handshakes/s with p99 < 100 ms", "/s", ">= 3,000", "handshakes"),
    Row("handshake_p99", "handshake p99 at that rate", "ms", "< 100", "handshakes"),
    Row(
        "handshakes_forwarder",
        "handshakes/s with p99 < 100 ms, bare forwarder",
        "/s",
        "",
        "handshakes",
    ),
    Row("handshake_cpu", "relay CPU per handshake, first rate", "µs", "", "handshakes"),
    Row(
        "handshake_cpu_forwarder",
        "bare forwarder CPU per handshake, same rate",
        "µs",
        "",
        "handshakes",
    ),
    Row(
        "handshake_cpu_generator", "generator CPU per handshake, same rate", "µs", "", "handshakes"
    ),
)


@dataclass(slots=True)
class Figures:
    """Every run's value of each row, per store (None: not measured, or nothing passed)."""

    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)

    def add(self, store: str, key: str, value: float | None) -> None:
        self.values.setdefault(store, {}).setdefault(key, []).append(value)

    def median(self, store: str, key: str) -> float | None:
        seen = [v for v in self.values.get(store, {}).get(key, []) if v is not None]
        return statistics.median(seen) if seen else None


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "x":
        return f"{value:.2f}"
    if unit in ("ms", "µs"):
        return f"{value:.1f} ms" if unit == "ms" else f"{value:,.0f} µs"
    return f"{value:,.0f} {unit}"


def table(
    figures: Figures,
    stores: Sequence[str],
    runs: int,
    drain_label: str,
    parts: Sequence[str] = PARTS,
) -> str:
    """The medians as one Markdown table: a row per figure of `parts`, a column per store."""
    head = [f"figure (median of {runs})", *stores, "must reach"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in (r for r in ROWS if r.part in parts):
        label = f"{row.label}, {drain_label}" if row.key == "drain" else row.label
        cells = [_cell(figures.median(s, row.key), row.unit) for s in stores]
        lines.append("| " + " | ".join([label, *cells, row.target or "—"]) + " |")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


@dataclass(frozen=True, slots=True)
class Relay:
    url: str
    pid: int


@contextlib.contextmanager
def relay(store: str, args: argparse.Namespace) -> Iterator[Relay]:
    """A relay on a fresh store (send_paths.start_relay), stopped and its store dropped after."""
    options = argparse.Namespace(
        admin_dsn=args.admin_dsn if store == "production" else None, redis_url=args.redis_url
    )
    with (
        tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp,
        send_paths.production_env(options) as env,
    ):
        log_path = Path(tmp, "relay.log")
        with log_path.open("w") as log:
            proc, url = send_paths.start_relay(Path(tmp), env, log=log)
            try:
                yield Relay(url, proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        warnings = [line for line in log_path.read_text().splitlines() if "WARNING" in line]
        if warnings:
            print(f"  {store}: the relay logged {len(warnings)} warnings, e.g. {warnings[0]}")


def loadtest(scenario: str, url: str, *options: str) -> report.Report | None:
    """One `relay-loadtest` invocation; its report, or None (and why) if the run failed."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-report-") as out:
        done = subprocess.run(
            [str(BIN / "relay-loadtest"), scenario, "--url", url, "--out", out, *options],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            why = (done.stdout + done.stderr).strip().splitlines()[-3:]
            print(f"    relay-loadtest {scenario} failed: {' / '.join(why)}", flush=True)
            return None
        return report.load(Path(out, "report.json"))


def online_max(url: str, args: argparse.Namespace, *, baseline: bool) -> report.Report | None:
    return loadtest(
        "steady",
        url,
        *("--devices", "100", "--size", "1024", "--rate", str(args.start_rate)),
        *("--duration", str(args.step_seconds), "--grace", "3"),
        *("--find-max", "--max-p99-ms", str(ONLINE_P99_MS)),
        *(("--baseline",) if baseline else ()),
    )


def _max_rate(rep: report.Report | None, name: str) -> float | None:
    run = None if rep is None else rep.runs.get(name)
    search = None if run is None else run.max_throughput
    return None if search is None or not search.max_rate else search.max_rate


@dataclass(slots=True)
class Sweep:
    """One server's connect-rate sweep: the highest rate that passed and its p99, and the CPU
    per handshake (server and generator, µs) of the first rate's storm."""

    rate: float | None = None
    p99: float | None = None
    cpu_us: float | None = None
    generator_cpu_us: float | None = None
    passing: bool = True

    def record(self, rate: int, run: RunResult, *, first: bool) -> None:
        p99 = run.latency_ms.handshake.p99
        count = run.latency_ms.handshake.count
        if first and count:
            cpu = run.server.cpu_seconds
            self.cpu_us = None if cpu is None else 1e6 * cpu / count
            self.generator_cpu_us = 1e6 * run.generator.cpu_seconds / count
        if p99 is None or p99 >= HANDSHAKE_P99_MS or run.connection_errors:
            self.passing = False
        elif self.passing:
            self.rate, self.p99 = float(rate), p99


def handshakes(url: str, args: argparse.Namespace, *, baseline: bool) -> dict[str, Sweep]:
    """Each server's sweep ("relay", and "baseline" with `baseline`): up the connect rates
    until every server has failed one (a server's highest rate is the last it passed)."""
    sweeps = {name: Sweep() for name in (("relay", "baseline") if baseline else ("relay",))}
    for i, rate in enumerate(args.connect_rates):
        if not any(s.passing for s in sweeps.values()):
            break
        forwarder_too = "baseline" in sweeps and sweeps["baseline"].passing
        rep = loadtest(
            "connect-storm",
            url,
            *("--devices", str(args.storm_devices), "--connect-rate", str(rate)),
            *("--hold", "0.5", "--grace", "3"),
            *(("--baseline",) if forwarder_too else ()),
        )
        if rep is None:
            break
        for name, run in rep.runs.items():
            sweeps[name].record(rate, run, first=i == 0)
            print(
                f"    connect-storm {rate}/s ({name}): handshake p99 "
                f"{run.latency_ms.handshake.p99} ms, errors {run.connection_errors}"
            )
    return sweeps


@dataclass(slots=True)
class BareForwarder:
    """The bare forwarder's figures of one run: measured beside the run's first store (the
    `--baseline` of its searches) and shared by every store of the run."""

    online_max: float | None = None
    handshakes: Sweep | None = None
    measured: bool = False


def measure(store: str, args: argparse.Namespace, figures: Figures, bare: BareForwarder) -> None:
    """Every figure of one store, on one fresh relay; a part that fails leaves its figure out."""
    first = not bare.measured
    bare.measured = True
    with relay(store, args) as target:
        if "online" in args.parts:
            search = online_max(target.url, args, baseline=first)
            relay_max = _max_rate(search, "relay")
            if first:
                bare.online_max = _max_rate(search, "baseline")
            figures.add(store, "online", relay_max)
            figures.add(store, "forwarder", bare.online_max)
            figures.add(store, "online_ratio", _ratio(relay_max, bare.online_max))
            print(
                f"  {store}: online max {relay_max} msg/s, forwarder {bare.online_max}", flush=True
            )
            if relay_max:
                half_p99(store, target, relay_max, args, figures)
        if "paths" in args.parts:
            paths(store, target, args, figures)
        if "drain" in args.parts:
            drain(store, target, args, figures)
        if "handshakes" in args.parts:
            sweeps = handshakes(target.url, args, baseline=first)
            if first:
                bare.handshakes = sweeps.get("baseline")
            mine = sweeps["relay"]
            figures.add(store, "handshakes", mine.rate)
            figures.add(store, "handshake_p99", mine.p99)
            figures.add(store, "handshake_cpu", mine.cpu_us)
            fw = bare.handshakes
            if fw is not None:
                figures.add(store, "handshakes_forwarder", fw.rate)
                figures.add(store, "handshake_cpu_forwarder", fw.cpu_us)
                figures.add(store, "handshake_cpu_generator", fw.generator_cpu_us)
            print(
                f"  {store}: handshakes {mine.rate}/s, p99 {mine.p99} ms, "
                f"{_cell(mine.cpu_us, 'µs')} CPU each"
                + ("" if fw is None else f"; forwarder {fw.rate}/s, {_cell(fw.cpu_us, 'µs')} each"),
                flush=True,
            )


def paths(store: str, target: Relay, args: argparse.Namespace, figures: Figures) -> None:
    """The online and stored paths of send_paths.py, and the relay's CPU per message online."""
    try:
        measured = asyncio.run(
            send_paths.one_run(target.url, args.pairs, args.messages, 1024, target.pid)
        )
    except Exception as exc:  # a refused or lost send: no figure for this run
        print(f"    send_paths failed: {exc!r}", flush=True)
        return
    online, stored = measured.online.rate, measured.stored.rate
    figures.add(store, "closed_online", online)
    figures.add(store, "closed_online_cpu", measured.online.cpu_us)
    figures.add(store, "closed_stored", stored)
    figures.add(store, "stored_ratio", stored / online)
    print(f"  {store}: online {measured.online}, stored {measured.stored}", flush=True)


def half_p99(
    store: str, target: Relay, relay_max: float, args: argparse.Namespace, figures: Figures
) -> None:
    rep = loadtest(
        "steady",
        target.url,
        *("--devices", "100", "--size", "1024", "--rate", str(round(relay_max / 2))),
        *("--duration", str(args.step_seconds), "--grace", "3", "--baseline"),
    )
    if rep is None:
        return
    p99 = rep.runs["relay"].latency_ms.delivery.p99
    p99_fw = rep.runs["baseline"].latency_ms.delivery.p99
    figures.add(store, "half_p99", p99)
    figures.add(store, "half_p99_forwarder", p99_fw)
    print(f"  {store}: delivery p99 at {relay_max / 2:.0f}/s {p99} ms (fwd {p99_fw})", flush=True)


def drain(store: str, target: Relay, args: argparse.Namespace, figures: Figures) -> None:
    """The drain rate, counted only when every stored message was delivered."""
    rep = loadtest(
        "offline-drain",
        target.url,
        *("--devices", str(2 * args.drain_devices), "--queue", str(args.drain_queue)),
        *("--size", "1024", "--grace", "10"),
    )
    if rep is None:
        return
    run = rep.runs["relay"]
    complete = run.counts.delivered == run.counts.sent == args.drain_devices * args.drain_queue
    figures.add(store, "drain", run.throughput.drain_per_s if complete else None)
    print(
        f"  {store}: drain {run.throughput.drain_per_s or 0:,.0f} msg/s "
        f"({run.counts.delivered} of {run.counts.sent} delivered"
        f"{'' if complete else ': not counted'})",
        flush=True,
    )


def _rates(text: str) -> list[int]:
    rates = [int(part) for part in text.split(",") if part.strip()]
    if not rates or any(r < 1 for r in rates):
        raise argparse.ArgumentTypeError("a comma-separated list of positive rates")
    return sorted(rates)


def _names_of(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of `allowed`."""

    def names(text: str) -> list[str]:
        given = [part.strip() for part in text.split(",") if part.strip()]
        if not given or any(name not in allowed for name in given):
            raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(allowed)}")
        return given

    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1, help="runs per store; the table gives medians")
    p.add_argument("--stores", type=_names_of(STORES), default=list(STORES))
    p.add_argument(
        "--parts",
        type=_names_of(PARTS),
        default=list(PARTS),
        help="what to measure (online: the searches and the p99 at half the maximum; paths:"
        " send_paths.py; drain; handshakes)",
    )
    p.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--start-rate", type=int, default=800, help="first step of the online search")
    p.add_argument("--step-seconds", type=float, default=4.0, help="seconds per load step")
    p.add_argument("--pairs", type=int, default=10, help="send_paths.py pairs")
    p.add_argument("--messages", type=int, default=300, help="send_paths.py messages per pair")
    p.add_argument("--drain-devices", type=int, default=200)
    p.add_argument("--drain-queue", type=int, default=100)
    p.add_argument("--storm-devices", type=int, default=1500)
    p.add_argument("--connect-rates", type=_rates, default=_rates("1000,2000,3000,5000"))
    return p


def main() -> None:
    args = parser().parse_args()
    figures = Figures()
    drain_label = f"{args.drain_devices} devices x {args.drain_queue} stored"
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", flush=True)
        bare = BareForwarder()
        for store in args.stores:
            measure(store, args, figures, bare)
        print()  # the medians so far: an interrupted series still leaves its figures
        print(table(figures, args.stores, run + 1, drain_label, args.parts), flush=True)


if __name__ == "__main__":
    main()
