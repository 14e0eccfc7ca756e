"""Throughput of the online path (recipient connected, acks) and the stored path (recipient
offline, then drained), against a relay started here on a fresh data directory.

    python benchmarks/send_paths.py --pairs 20 --messages 500 --size 1024 --runs 3
    python benchmarks/send_paths.py --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres \
        --redis-url redis://127.0.0.1:6379/0      # production mode: a fresh database per run

Prints messages per second for each path with the relay's CPU per message (its user + system
time over the path, from /proc), the median over the runs, the ratio stored/online, and
(production mode) the average number of envelopes per group commit. `--tree DIR` runs the
relay from another source tree (e.g. `git archive REV | tar -x -C DIR`).

Two relays per run, and their ratios: `--at-rest both` (with and without encryption at
rest) or `--baseline-tree DIR` (this tree against another). They are measured one after
the other, alternating which goes first, or with `--side-by-side` at the same time (each
path starts on both at once), which is the steadier comparison on a shared machine.
A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from websockets.asyncio.client import ClientConnection, connect

from protocol.codec import WireFormat, decode_server_frame, encode
from protocol.frames import (
    ANSWER_TYPES,
    Ack,
    Auth,
    AuthOk,
    Deliver,
    DeviceMessage,
    QueueEmpty,
    Register,
    Send,
    SendOk,
)
from protocol.payloads import auth_payload, register_payload
from protocol.signatures import IdentityKeyPair, KeyScheme

FMT = WireFormat.MSGPACK


def start_relay(
    data_dir: Path,
    env: dict[str, str],
    *extra: str,
    log: IO[str] | None = None,
    tree: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """A relay on a free port with no request or registration limit; its WebSocket URL. Its
    log goes to `log` (default: this process's stderr); `tree`: the source tree to run it
    from."""
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--rate-requests",
            "1000000",
            "--rate-requests-burst",
            "1000000",
            "--max-registrations-per-address",
            "0",
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, **env},
        cwd=tree,  # `python -m` puts the working directory first, before PYTHONPATH
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.rsplit(" ", 1)[-1].strip()


async def register(url: str) -> tuple[ClientConnection, str, IdentityKeyPair]:
    ws = await connect(url, max_size=None)
    challenge = decode_server_frame(await ws.recv(), FMT, lambda rid: None)
    key = IdentityKeyPair.generate(KeyScheme.ED25519)
    nonce = challenge.nonce
    frame = Register(
        rid=1,
        identity_key=key.public_key,
        key_scheme=KeyScheme.ED25519,
        signature=key.sign(register_payload(nonce, key.public_key)),
    )
    await ws.send(encode(frame, FMT))
    answer = decode_server_frame(await ws.recv(), FMT, lambda rid: AuthOk)
    assert isinstance(answer, AuthOk)
    return ws, answer.user, key


async def receiver(ws: ClientConnection, count: int) -> None:
    """Read deliveries and ack them in batches until `count` have arrived."""
    seen = 0
    while seen < count:
        frame = decode_server_frame(await ws.recv(), FMT, lambda rid: None)
        if isinstance(frame, Deliver):
            seen += 1
            await ws.send(encode(Ack(ids=(frame.id,)), FMT))
        elif isinstance(frame, QueueEmpty):
            continue


async def sender(ws: ClientConnection, to: str, count: int, size: int, window: int) -> None:
    """Keep `window` sends outstanding until `count` are answered ok."""
    body = os.urandom(size)
    answered = 0
    sent = 0
    while answered < count:
        while sent < count and sent - answered < window:
            sent += 1
            frame = Send(
                rid=sent,
                id=uuid.uuid4().bytes,
                to=to,
                ts=int(time.time() * 1000),
                nonce=os.urandom(24),
                devices=(DeviceMessage(device=1, type=2, body=body),),
            )
            await ws.send(encode(frame, FMT))
        reply = decode_server_frame(await ws.recv(), FMT, lambda rid: ANSWER_TYPES[Send])
        if isinstance(reply, SendOk):
            answered += 1
        elif not isinstance(reply, QueueEmpty):
            raise RuntimeError(f"unexpected {reply}")


@dataclass(frozen=True, slots=True)
class Phase:
    """One path's figures: messages per second, and the relay's CPU per message when known."""

    rate: float
    cpu_us: float | None

    def __str__(self) -> str:
        cpu = "" if self.cpu_us is None else f" ({self.cpu_us:.0f} µs relay CPU/msg)"
        return f"{self.rate:,.0f} msg/s{cpu}"


@dataclass(frozen=True, slots=True)
class Paths:
    online: Phase
    stored: Phase
    drain: Phase


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of a process so far (Linux /proc); None when not readable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


async def timed(total: int, pid: int | None, *work: Awaitable[None]) -> Phase:
    """Run `work` concurrently: `total` messages per second of it, and the relay's CPU."""
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    await asyncio.gather(*work)
    elapsed = time.perf_counter() - start
    after = cpu_seconds(pid)
    used = None if cpu is None or after is None else (after - cpu) / total * 1e6
    return Phase(total / elapsed, used)


async def login(url: str, user: str, key: IdentityKeyPair) -> ClientConnection:
    """Device 1 of `user`, authenticated again (its stored messages follow)."""
    ws = await connect(url, max_size=None)
    challenge = decode_server_frame(await ws.recv(), FMT, lambda rid: None)
    nonce = challenge.nonce
    await ws.send(
        encode(
            Auth(rid=1, user=user, device=1, signature=key.sign(auth_payload(nonce, user, 1))),
            FMT,
        )
    )
    decode_server_frame(await ws.recv(), FMT, lambda rid: AuthOk)
    return ws


async def one_run(
    url: str,
    pairs: int,
    messages: int,
    size: int,
    relay_pid: int | None = None,
    *,
    online_path: bool = True,
) -> Paths:
    """The three paths against one relay."""
    (paths,) = await runs_together(
        [(url, relay_pid)], pairs, messages, size, online_path=online_path
    )
    return paths


async def runs_together(
    relays: Sequence[tuple[str, int | None]],
    pairs: int,
    messages: int,
    size: int,
    *,
    online_path: bool = True,
) -> list[Paths]:
    """The three paths against each relay (URL, process id), the relays side by side: each
    path starts on all of them at once, so they share the machine's load of the moment, and
    each one's rate and CPU per message is its own."""
    senders, receivers = [], []
    for url, _ in relays:
        senders.append([await register(url) for _ in range(pairs)])
        receivers.append([await register(url) for _ in range(pairs)])
        for ws, _, _ in receivers[-1]:
            await ws.recv()  # queue_empty
    total = pairs * messages

    async def together(work: Callable[[int], list[Awaitable[None]]]) -> list[Phase]:
        return list(
            await asyncio.gather(
                *(timed(total, pid, *work(i)) for i, (_, pid) in enumerate(relays))
            )
        )

    def sending(i: int) -> list[Awaitable[None]]:
        return [
            sender(s[0], r[1], messages, size, 32)
            for s, r in zip(senders[i], receivers[i], strict=True)
        ]

    online = [Phase(0.0, None)] * len(relays)
    if online_path:
        online = await together(
            lambda i: [*sending(i), *(receiver(r[0], messages) for r in receivers[i])]
        )
    # Stored path: receivers offline.
    for ws, _, _ in (r for group in receivers for r in group):
        await ws.close()
    stored = await together(sending)

    # Drain: reconnect and read everything.
    async def drain(url: str, user: str, key: IdentityKeyPair) -> None:
        ws = await login(url, user, key)
        await receiver(ws, messages)
        await ws.close()

    drained = await together(
        lambda i: [drain(relays[i][0], user, key) for _, user, key in receivers[i]]
    )
    for ws, _, _ in (s for group in senders for s in group):
        await ws.close()
    return [Paths(*paths) for paths in zip(online, stored, drained, strict=True)]


@contextlib.contextmanager
def production_env(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    """A fresh, migrated database and Redis prefix for one run; dropped afterwards."""
    if not args.admin_dsn:
        yield {}
        return
    import asyncpg
    import redis

    tag = uuid.uuid4().hex[:12]
    name = f"relay_bench_{tag}"
    url = f"{args.admin_dsn.rpartition('/')[0]}/{name}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(args.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    prefix = f"relaybench:{tag}:"
    key_dir = tempfile.TemporaryDirectory(prefix="relay-bench-key-")
    key_file = Path(key_dir.name) / "master.key"
    key_file.write_text(os.urandom(32).hex() + "\n", encoding="ascii")
    key_file.chmod(0o600)
    try:
        subprocess.run(
            [sys.executable, "-m", "relay", "migrate", "--database-url", url],
            check=True,
            capture_output=True,
        )
        yield {
            "RELAY_DATABASE_URL": url,
            "RELAY_REDIS_URL": args.redis_url,
            "RELAY_REDIS_PREFIX": prefix,
            "RELAY_MASTER_KEY_FILE": str(key_file),
        }
    finally:
        key_dir.cleanup()
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def group_commit_figure(ws_url: str) -> str:
    """The store's group-commit counters from /v1/stats, when it keeps them."""
    http_url = ws_url.replace("ws://", "http://").replace("/v1/ws", "/v1/stats")
    with urllib.request.urlopen(http_url, timeout=10) as response:
        stats = json.load(response)
    commits = stats.get("group_commit")
    if not commits or not commits.get("batches"):
        return ""
    return f"  envelopes/commit {commits['envelopes'] / commits['batches']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="per pair and path")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--admin-dsn", help="PostgreSQL URL to create run databases with")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--tree", type=Path, help="run the relay from this source tree (first on PYTHONPATH)"
    )
    parser.add_argument(
        "--no-online", action="store_true", help="only the stored path and the drain"
    )
    parser.add_argument(
        "--at-rest",
        choices=["on", "off", "both"],
        default="on",
        help="encryption at rest of the relay's store; `both` measures a relay with it and "
        "one without in each run (alternating which goes first) and prints on/off ratios",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run a relay from this source tree in each run (alternating which goes "
        "first) and print ratios of the relay under test (--tree, or this checkout) to it",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="with --at-rest both or --baseline-tree: run the two relays at the same time "
        "(each path starts on both at once), instead of one after the other",
    )
    args = parser.parse_args()
    variants = _variants(args)
    if args.side_by_side and len(variants) != 2:
        parser.error("--side-by-side compares two relays: use --at-rest both or --baseline-tree")
    if args.baseline_tree is not None and args.at_rest == "both":
        parser.error("compare either two at-rest modes or two trees, not both at once")
    results: dict[str, list[Paths]] = {v.label: [] for v in variants}
    for run in range(args.runs):
        ordered = variants if run % 2 == 0 else variants[::-1]
        measured = (
            _measure_side_by_side(args, ordered)
            if args.side_by_side
            else _measure_one_by_one(args, ordered)
        )
        for variant, paths, commits in measured:
            results[variant.label].append(paths)
            print(
                f"run {run + 1} ({variant.label}): online {paths.online}  "
                f"stored {paths.stored}  drain {paths.drain}{commits}",
                flush=True,
            )
    medians = {label: _medians(found) for label, found in results.items()}
    for label, med in medians.items():
        online, stored = med["online"].rate, med["stored"].rate
        ratio = f"  stored/online {stored / online:.2f}" if online else ""
        print(
            f"median of {args.runs} ({label}): online {med['online']}  "
            f"stored {med['stored']}  drain {med['drain']}{ratio}"
        )
    if len(variants) == 2:
        base, measured_label = variants[0].label, variants[1].label
        mine, theirs = medians[measured_label], medians[base]
        shown = []
        for name in ("online", "stored", "drain"):
            if theirs[name].rate:
                shown.append(f"{name} rate {mine[name].rate / theirs[name].rate:.3f}")
            mine_cpu, their_cpu = mine[name].cpu_us, theirs[name].cpu_us
            if mine_cpu and their_cpu:
                shown.append(f"{name} CPU/msg {mine_cpu / their_cpu:.3f}")
        print(f"{measured_label} / {base}: " + ", ".join(shown))
        pairs = list(zip(results[measured_label], results[base], strict=True))
        print("the same, median of the per-run ratios: " + ", ".join(_paired(pairs)))


@dataclass(frozen=True, slots=True)
class Variant:
    """One relay of a run: its label in the output, at-rest mode and source tree."""

    label: str
    at_rest: str
    tree: Path | None


def _variants(args: argparse.Namespace) -> list[Variant]:
    """The relays of each run; with two, the second is divided by the first."""
    tree = None if args.tree is None else args.tree.resolve()
    if args.baseline_tree is not None:
        mode = "on" if args.at_rest == "both" else args.at_rest
        return [
            Variant("baseline tree", mode, args.baseline_tree.resolve()),
            Variant("tree under test", mode, tree),
        ]
    modes = ["off", "on"] if args.at_rest == "both" else [args.at_rest]
    return [Variant(f"at rest {mode}", mode, tree) for mode in modes]


def _paired(pairs: list[tuple[Paths, Paths]]) -> list[str]:
    """The ratio of each run's two relays (measured one after the other, or side by side),
    then their median: steadier than the ratio of medians when the load of a shared machine
    moves between runs."""
    shown = []
    for name in ("online", "stored", "drain"):
        phases = [(getattr(mine, name), getattr(theirs, name)) for mine, theirs in pairs]
        rates = [mine.rate / theirs.rate for mine, theirs in phases if theirs.rate]
        if rates:
            shown.append(f"{name} rate {statistics.median(rates):.3f}")
        cpus = [
            mine.cpu_us / theirs.cpu_us for mine, theirs in phases if mine.cpu_us and theirs.cpu_us
        ]
        if cpus:
            shown.append(f"{name} CPU/msg {statistics.median(cpus):.3f}")
    return shown


def _at_rest_env(mode: str) -> dict[str, str]:
    """Encryption at rest is on by default (production_env gives the master key)."""
    return {"RELAY_AT_REST_ENCRYPTION": "false"} if mode == "off" else {}


def _measure_one_by_one(
    args: argparse.Namespace, variants: list[Variant]
) -> Iterator[tuple[Variant, Paths, str]]:
    """Each relay on a fresh store, measured alone, in turn."""
    for variant in variants:
        with contextlib.ExitStack() as stack:
            yield variant, *_measure(args, [_started(args, stack, variant)])[0]


def _measure_side_by_side(
    args: argparse.Namespace, variants: list[Variant]
) -> list[tuple[Variant, Paths, str]]:
    """Every relay on a fresh store, all measured at the same time."""
    with contextlib.ExitStack() as stack:
        relays = [_started(args, stack, variant) for variant in variants]
        return [
            (variant, paths, commits)
            for variant, (paths, commits) in zip(variants, _measure(args, relays), strict=True)
        ]


def _started(
    args: argparse.Namespace, stack: contextlib.ExitStack, variant: Variant
) -> tuple[subprocess.Popen[str], str]:
    """A relay of this variant on a fresh store, stopped (and its store dropped) when `stack`
    closes."""
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    env = stack.enter_context(production_env(args))
    proc, url = start_relay(
        data_dir / "data", {**env, **_at_rest_env(variant.at_rest)}, tree=variant.tree
    )

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=30)

    stack.callback(stop)
    return proc, url


def _measure(
    args: argparse.Namespace, relays: list[tuple[subprocess.Popen[str], str]]
) -> list[tuple[Paths, str]]:
    found = asyncio.run(
        runs_together(
            [(url, proc.pid) for proc, url in relays],
            args.pairs,
            args.messages,
            args.size,
            online_path=not args.no_online,
        )
    )
    return [
        (paths, group_commit_figure(url)) for paths, (_, url) in zip(found, relays, strict=True)
    ]


def _medians(results: list[Paths]) -> dict[str, Phase]:
    return {
        name: Phase(
            statistics.median(getattr(r, name).rate for r in results),
            _median_or_none([getattr(r, name).cpu_us for r in results]),
        )
        for name in ("online", "stored", "drain")
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


if __name__ == "__main__":
    main()
