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
  the handshake p99 reaches 100 ms or a connection fails; the highest rate that passed.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import send_paths

from loadtest import report

BIN = Path(sys.executable).parent
STORES = ("embedded", "production")
ONLINE_P99_MS = 50.0
HANDSHAKE_P99_MS = 100.0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: how to read it off the figures, and the line it must reach."""

    key: str
    label: str
    unit: str
    target: str


ROWS = (
    Row("online", "online 1:1 max, relay (p99 <= 50 ms)", "msg/s", ""),
    Row("forwarder", "online 1:1 max, bare forwarder", "msg/s", ""),
    Row("online_ratio", "relay / forwarder", "x", ">= 0.5"),
    Row("half_p99", "delivery p99 at half the relay's max", "ms", "<= 10"),
    Row("half_p99_forwarder", "forwarder delivery p99, same rate", "ms", ""),
    Row("closed_online", "online path, 32 outstanding per sender", "msg/s", ""),
    Row("closed_online_cpu", "relay CPU per message, online path", "µs", ""),
    Row("closed_stored", "stored path (recipient offline)", "msg/s", ""),
    Row("stored_ratio", "stored / online", "x", ">= 0.5"),
    Row("drain", "drain", "msg/s", ">= 20,000"),
    Row("handshakes", "handshakes/s with p99 < 100 ms", "/s", ">= 3,000"),
    Row("handshake_p99", "handshake p99 at that rate", "ms", "< 100"),
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
        return f"{value:.1f} ms" if unit == "ms" else f"{value:.0f} µs"
    return f"{value:,.0f} {unit}"


def table(figures: Figures, stores: Sequence[str], runs: int, drain_label: str) -> str:
    """The medians as one Markdown table: a row per figure, a column per store."""
    head = [f"figure (median of {runs})", *stores, "must reach"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in ROWS:
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


def handshakes(url: str, args: argparse.Namespace) -> tuple[float | None, float | None]:
    """The highest connect rate whose handshake p99 stayed under 100 ms; that p99."""
    best: tuple[float | None, float | None] = (None, None)
    for rate in args.connect_rates:
        rep = loadtest(
            "connect-storm",
            url,
            *("--devices", str(args.storm_devices), "--connect-rate", str(rate)),
            *("--hold", "0.5", "--grace", "3"),
        )
        if rep is None:
            break
        run = rep.runs["relay"]
        p99 = run.latency_ms.handshake.p99
        print(f"    connect-storm {rate}/s: handshake p99 {p99} ms, errors {run.connection_errors}")
        if p99 is None or p99 >= HANDSHAKE_P99_MS or run.connection_errors:
            break
        best = (float(rate), p99)
    return best


def measure(store: str, args: argparse.Namespace, figures: Figures, forwarder: list[float]) -> None:
    """Every figure of one store, on one fresh relay; a part that fails leaves its figure out."""
    with relay(store, args) as target:
        search = online_max(target.url, args, baseline=not forwarder)
        relay_max = _max_rate(search, "relay")
        if not forwarder:
            forwarder.append(_max_rate(search, "baseline") or 0.0)
        figures.add(store, "online", relay_max)
        figures.add(store, "forwarder", forwarder[0] or None)
        figures.add(store, "online_ratio", _ratio(relay_max, forwarder[0]))
        print(f"  {store}: online max {relay_max} msg/s, forwarder {forwarder[0]}", flush=True)
        if relay_max:
            half_p99(store, target, relay_max, args, figures)
        try:
            paths = asyncio.run(
                send_paths.one_run(target.url, args.pairs, args.messages, 1024, target.pid)
            )
        except Exception as exc:  # a refused or lost send: no figure for this run
            print(f"    send_paths failed: {exc!r}", flush=True)
        else:
            online, stored = paths.online.rate, paths.stored.rate
            figures.add(store, "closed_online", online)
            figures.add(store, "closed_online_cpu", paths.online.cpu_us)
            figures.add(store, "closed_stored", stored)
            figures.add(store, "stored_ratio", stored / online)
            print(f"  {store}: online {paths.online}, stored {paths.stored}", flush=True)
        drain(store, target, args, figures)
        rate, p99 = handshakes(target.url, args)
        figures.add(store, "handshakes", rate)
        figures.add(store, "handshake_p99", p99)
        print(f"  {store}: handshakes {rate}/s, p99 {p99} ms", flush=True)


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


def _stores(text: str) -> list[str]:
    stores = [part.strip() for part in text.split(",") if part.strip()]
    if not stores or any(s not in STORES for s in stores):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(STORES)}")
    return stores


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1, help="runs per store; the table gives medians")
    p.add_argument("--stores", type=_stores, default=list(STORES))
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
        forwarder: list[float] = []  # searched with the first store, shared by both
        for store in args.stores:
            measure(store, args, figures, forwarder)
        print()  # the medians so far: an interrupted series still leaves its figures
        print(table(figures, args.stores, run + 1, drain_label), flush=True)


if __name__ == "__main__":
    main()
