"""`relay-loadtest`: run a scenario against a relay (and the bare forwarder), write the report.

    relay-loadtest steady --url ws://127.0.0.1:8765/v1/ws --devices 200 --rate 2000 \\
        --duration 30 --size 1024 --baseline --out DIR
    relay-loadtest compare A/report.json B/report.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest import environment, html, multi, report
from loadtest.baseline import ForwarderProcess
from loadtest.compare import compare, format_rows
from loadtest.figures import Latency, RunResult
from loadtest.maxrate import Thresholds, find_max
from loadtest.probe import MetricsProbe, PidProbe, Probe
from loadtest.report import Report
from loadtest.runner import RunFailed, run_workload
from loadtest.workload import Pairing, Scenario, Workload
from protocol.client import ClientError, TlsSetupError, context_for
from protocol.codec import WireFormat
from protocol.version import version_line

DEFAULT_URL = "ws://127.0.0.1:8765/v1/ws"
DEFAULT_DURATION = {Scenario.SOAK: 600.0, Scenario.FAULTS: 600.0}
MAX_DEVICES = 100_000
MAX_RATE = 1_000_000.0
MAX_BODY = 256 * 1024


def _bounded(kind: type[float] | type[int], lo: float, hi: float) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo:g}..{hi:g}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="relay-loadtest",
        description="Load-test harness for the relay (a client like any other).",
    )
    top.add_argument("--version", action="version", version=version_line("relay-loadtest"))
    sub = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("workload")
    g.add_argument("--url", default=DEFAULT_URL, help="relay WebSocket URL (%(default)s)")
    g.add_argument(
        "--ca-file",
        metavar="PATH",
        help="PEM CA bundle to verify a wss:// relay with (default: the system's CAs)",
    )
    g.add_argument("--devices", type=_bounded(int, 2, MAX_DEVICES), default=200)
    g.add_argument(
        "--rate",
        type=_bounded(float, 0.1, MAX_RATE),
        default=2000.0,
        help="target messages per second, all processes together (fanout: group messages)",
    )
    g.add_argument("--duration", type=_bounded(float, 0.5, 7 * 86400), help="seconds of traffic")
    g.add_argument("--size", type=_bounded(int, 1, MAX_BODY), default=1024, help="body bytes")
    g.add_argument("--pairing", choices=[p.value for p in Pairing], default="pairs")
    g.add_argument("--group", type=_bounded(int, 1, 1000), default=10, help="fanout group size")
    g.add_argument(
        "--multi",
        action="store_true",
        help="fanout: one group message as a send per member and as one send.multi frame "
        "(shared payload, and a body per device), side by side (loadtest/multi.py)",
    )
    g.add_argument(
        "--member-devices",
        type=_bounded(int, 1, 6),
        default=3,
        help="fanout --multi: devices of each member user (%(default)s)",
    )
    g.add_argument(
        "--queue", type=_bounded(int, 1, 100_000), default=100, help="offline-drain: per device"
    )
    g.add_argument(
        "--connect-rate",
        type=_bounded(float, 1, 100_000),
        default=500.0,
        help="connections/s (connect-storm --find-max: the first step)",
    )
    g.add_argument("--hold", type=_bounded(float, 0, 3600), default=5.0, help="connect-storm hold")
    g.add_argument(
        "--jitter", type=_bounded(float, 0, 600), default=2.0, help="reconnect-storm jitter (s)"
    )
    g.add_argument(
        "--also-url",
        action="append",
        default=[],
        metavar="URL",
        help="faults: another node of the same cluster (repeat); devices are spread over the "
        "nodes and move to the next one when theirs goes away",
    )
    g.add_argument(
        "--offline-share",
        type=_bounded(float, 0, 0.9),
        default=0.2,
        help="faults: share of its time a device spends offline (%(default)s)",
    )
    g.add_argument(
        "--away",
        type=_bounded(float, 0.1, 600),
        default=3.0,
        help="faults: mean seconds of one offline period (%(default)s)",
    )
    g.add_argument(
        "--grace",
        type=_bounded(float, 0.5, 600),
        default=10.0,
        help="seconds to wait for answers and deliveries after the traffic",
    )
    g.add_argument("--prekeys", type=_bounded(int, 0, 100), default=5, help="one-time pre-keys")
    g.add_argument("--json", action="store_true", help="speak relay.v1+json instead of msgpack")
    g.add_argument(
        "--e2e",
        action="store_true",
        help="bodies are real end-to-end ciphertext (X3DH/PQXDH + Double Ratchet) of --size bytes",
    )
    g.add_argument("--bucket", type=_bounded(float, 0.1, 3600), help="seconds per series point")
    r = common.add_argument_group("run")
    r.add_argument(
        "--procs", type=_bounded(int, 1, 64), default=2, help="generator processes (%(default)s)"
    )
    r.add_argument("--out", type=Path, default=Path("loadtest-report"), help="report directory")
    r.add_argument(
        "--baseline",
        action="store_true",
        help="also run the workload against the bare forwarder and report ratios",
    )
    r.add_argument("--find-max", action="store_true", help="step the rate up to find the max")
    r.add_argument("--max-p99-ms", type=_bounded(float, 0.01, 1e6), default=100.0)
    r.add_argument("--max-loss", type=_bounded(float, 0, 1), default=0.0)
    r.add_argument("--step-factor", type=_bounded(float, 1.01, 10), default=1.5)
    r.add_argument(
        "--refine", type=_bounded(int, 0, 10), default=2, help="bisection steps after a failure"
    )
    r.add_argument("--max-steps", type=_bounded(int, 1, 100), default=12)
    r.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless the relay run is clean: sent = ok = delivered, nothing lost, "
        "duplicated or refused, no connection error",
    )
    for scenario in Scenario:
        sub.add_parser(scenario.value, parents=[common], help=f"run the {scenario} scenario")
    cmp = sub.add_parser("compare", help="print the differences between two report.json files")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    return top


def _workload(args: argparse.Namespace) -> Workload:
    scenario = Scenario(args.command)
    duration = args.duration or DEFAULT_DURATION.get(scenario, 30.0)
    bucket = args.bucket or max(1.0, round(duration / 300))
    if args.json and args.baseline:
        raise SystemExit("the baseline forwarder speaks relay.v1+msgpack only: drop --json")
    if args.e2e and args.pairing == Pairing.RANDOM:
        raise SystemExit("--e2e needs --pairing pairs (one session per pair, set up in advance)")
    if args.e2e and args.group > 100:
        raise SystemExit(
            "--e2e: a fanout sender fetches every receiver's keys: --group 100 at most"
        )
    if scenario is Scenario.FANOUT and args.devices < args.group + 1:
        raise SystemExit(f"fanout needs at least --group + 1 = {args.group + 1} devices")
    return Workload(
        scenario=scenario,
        url=args.url,
        devices=args.devices,
        rate=args.rate,
        duration=duration,
        size=args.size,
        procs=args.procs,
        pairing=Pairing(args.pairing),
        group=args.group,
        queue=args.queue,
        connect_rate=args.connect_rate,
        hold=args.hold,
        jitter=args.jitter,
        grace=args.grace,
        prekeys=args.prekeys,
        bucket=bucket,
        subprotocol="relay.v1+json" if args.json else "relay.v1+msgpack",
        e2e=args.e2e,
        ca_file=args.ca_file,
        also_urls=tuple(args.also_url),
        offline_share=args.offline_share,
        away=args.away,
    )


def _run_target(w: Workload, probe: Probe | None, name: str, args: argparse.Namespace) -> RunResult:
    def once(step: Workload) -> RunResult:
        label = f"{name} @ {step.stepped_rate:g}/s" if args.find_max else name
        return run_workload(step, probe, target=step.url, label=label)

    if args.find_max:
        th = Thresholds(
            max_p99_ms=args.max_p99_ms,
            max_loss=args.max_loss,
            factor=args.step_factor,
            refine=args.refine,
            max_steps=args.max_steps,
        )
        return find_max(w, once, th)
    return once(w)


def _ms(latency: Latency, *values: float | None) -> str:
    return " / ".join("—" if not latency.count or v is None else f"{v:.2f}" for v in values)


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


# The summary table: one row per figure, one cell per run.
SUMMARY_ROWS: tuple[tuple[str, Callable[[RunResult], str]], ...] = (
    ("delivered msg/s", lambda r: _figure(r.throughput.delivered_per_s)),
    ("sent / ok / delivered", lambda r: f"{r.counts.sent} / {r.counts.ok} / {r.counts.delivered}"),
    (
        "lost / duplicated / after ack",
        lambda r: f"{r.counts.lost} / {r.counts.duplicated} / {r.counts.delivered_after_ack}",
    ),
    (
        "after a confirmed ack: sent once / retried",
        lambda r: (
            f"{r.counts.delivered_after_confirmed_ack} / {r.counts.retried_after_confirmed_ack}"
        ),
    ),
    ("errors", lambda r: _figure(r.counts.errors)),
    ("ok p50 / p99 ms", lambda r: _ms(r.latency_ms.ok, r.latency_ms.ok.p50, r.latency_ms.ok.p99)),
    (
        "delivery p50 / p99 / max ms",
        lambda r: _ms(
            r.latency_ms.delivery,
            r.latency_ms.delivery.p50,
            r.latency_ms.delivery.p99,
            r.latency_ms.delivery.max,
        ),
    ),
    (
        "handshake p50 / p99 ms",
        lambda r: _ms(
            r.latency_ms.handshake, r.latency_ms.handshake.p50, r.latency_ms.handshake.p99
        ),
    ),
    ("generator CPU % of a core", lambda r: _figure(r.generator.cpu_percent_of_one_core)),
    (
        "max rate msg/s",
        lambda r: _figure(None if r.max_throughput is None else r.max_throughput.max_rate),
    ),
)


def _summary(rep: Report, console: Console) -> None:
    table = Table(title=f"relay-loadtest {rep.workload['scenario']}")
    table.add_column("figure")
    for name in rep.runs:
        table.add_column(name, justify="right")
    for label, cell in SUMMARY_ROWS:
        table.add_row(label, *(cell(run) for run in rep.runs.values()))
    console.print(table)
    for name, run in rep.runs.items():
        for key, value in run.throughput.extras().items():
            console.print(f"{name} {key}: {value:,.2f}")
    for key, ratio in (rep.ratios_to_baseline or {}).items():
        console.print(f"relay ÷ baseline {key}: {'—' if ratio is None else f'{ratio:.3f}'}")


def _clean(run: RunResult) -> bool:
    c = run.counts
    return bool(
        c.sent == c.ok == c.delivered == c.scheduled
        and c.lost == c.duplicated == c.delivered_after_ack == 0
        and c.unanswered == c.errors == c.unexpected == 0
        and not c.errors_by_code
        and not run.connection_errors
    )


def _multi(args: argparse.Namespace, w: Workload, tls: Any, console: Console) -> int:
    """`fanout --multi`: the forms of one group message side by side (loadtest/multi.py)."""
    if w.scenario is not Scenario.FANOUT:
        raise SystemExit("--multi goes with the fanout scenario")
    mw = multi.MultiWorkload(
        url=w.url,
        group=w.group,
        member_devices=args.member_devices,
        rate=w.rate,
        duration=w.duration,
        size=w.size,
        fmt=WireFormat.JSON if args.json else WireFormat.MSGPACK,
        ssl=tls,
    )
    try:
        result = asyncio.run(multi.run_multi(mw))
    except (RuntimeError, OSError, TimeoutError, ClientError) as exc:
        console.print(f"[red]relay-loadtest: {exc!r}[/red]")
        return 2
    table = Table(title=f"relay-loadtest fanout --multi: {w.group} users x {args.member_devices}")
    table.add_column("figure")
    for form in multi.FORMS:
        table.add_column(form, justify="right")
    for name, cells in multi.as_rows(result):
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"wrote {multi.write(result, args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    if args.command == "compare":
        try:
            a, b = report.load(args.a), report.load(args.b)
        except (OSError, ValueError) as exc:
            console.print(f"relay-loadtest compare: {exc}")
            return 2
        print(format_rows(compare(a, b)))
        return 0
    w = _workload(args)
    try:
        tls = context_for(w.url, w.ca_file)
    except TlsSetupError as exc:
        console.print(f"[red]relay-loadtest: {exc}[/red]")
        return 2
    if args.multi:
        return _multi(args, w, tls, console)
    runs: dict[str, RunResult] = {}
    try:
        runs["relay"] = _run_target(w, MetricsProbe(w.url, tls), "relay", args)
        if args.baseline:
            with ForwarderProcess() as fw:
                runs["baseline"] = _run_target(
                    w.for_url(fw.url), PidProbe(fw.pid), "baseline", args
                )
    except (RunFailed, RuntimeError) as exc:
        console.print(f"[red]relay-loadtest: {exc}[/red]")
        return 2
    rep = report.build(
        environment.describe(),
        w.as_json(),
        runs,
        ["relay-loadtest", *sys.argv[1:]] if argv is None else ["relay-loadtest", *argv],
    )
    json_path = report.write(rep, args.out)
    html_path = html.write(rep, args.out)
    _summary(rep, console)
    console.print(f"wrote {json_path} and {html_path}")
    if args.check and not _clean(runs["relay"]):
        console.print("[red]the relay run's ledger is not clean[/red]")
        return 1
    return 0
