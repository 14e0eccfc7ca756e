"""A client that pings without end and never reads: what it costs the relay, per source tree.

    python benchmarks/ping_flood.py TREE [TREE ...] [--rounds 3] [--seconds 8]

Make a TREE with `git archive REV | tar -x -C DIR` (or pass `.`). Each run starts a fresh
relay from that tree (embedded store, its own data directory; the tree first on PYTHONPATH,
this checkout's virtual environment for the dependencies), opens one WebSocket with a 4 KiB
receive buffer, reads the challenge, then writes 125-byte pings as fast as the relay takes
them for `--seconds`, reading nothing. Prints, per run: the pings the relay accepted, its
peak RSS over its RSS before, and whether and when it dropped the connection; then the
medians per tree. Trees alternate within each round, so the machine's noise falls on all
alike. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

READY = re.compile(r"serving on ws://127\.0\.0\.1:(\d+)/v1/ws")
PING_PAYLOAD = b"p" * 125
BATCH = 1000  # pings per write


@dataclass(frozen=True, slots=True)
class Run:
    pings_mib: float
    rss_growth_mib: float
    dropped_after_s: float | None  # None: still open at the end


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def masked_ping() -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(PING_PAYLOAD))
    return bytes([0x89, 0x80 | len(PING_PAYLOAD)]) + key + body


async def flood(port: int, pid: int, seconds: float) -> Run:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(request.encode())
    async with asyncio.timeout(10):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        head = await reader.readexactly(2)  # the challenge, read so the relay is past it
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        await reader.readexactly(length)
    before = rss_mib(pid)
    peak = before
    batch = masked_ping() * BATCH
    sent = 0
    started = time.monotonic()
    dropped: float | None = None
    try:
        async with asyncio.timeout(seconds):
            while True:
                writer.write(batch)
                await writer.drain()
                sent += len(batch)
                peak = max(peak, rss_mib(pid))
    except TimeoutError:
        pass
    except ConnectionError:
        dropped = time.monotonic() - started
    writer.close()
    return Run(sent / 2**20, max(peak, rss_mib(pid)) - before, dropped)


def run_tree(tree: Path, seconds: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="relay-ping-flood-") as scratch:
        env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
        command = [sys.executable, "-m", "relay", "serve", "--port", "0", "--data-dir", scratch]
        command += ["--log-level", "WARNING"]
        proc = subprocess.Popen(
            command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                found = READY.search(line)
                if found:
                    return asyncio.run(flood(int(found.group(1)), proc.pid, seconds))
            raise RuntimeError(f"the relay from {tree} did not start")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    runs: dict[Path, list[Run]] = {tree: [] for tree in args.trees}
    for round_no in range(1, args.rounds + 1):
        for tree in args.trees:
            run = run_tree(tree, args.seconds)
            runs[tree].append(run)
            ended = (
                "still open"
                if run.dropped_after_s is None
                else f"dropped after {run.dropped_after_s:.2f} s"
            )
            print(
                f"round {round_no} {tree}: {run.pings_mib:.1f} MiB of pings accepted, "
                f"relay RSS +{run.rss_growth_mib:.0f} MiB, {ended}",
                flush=True,
            )
    print("medians:")
    for tree, done in runs.items():
        pings = statistics.median(r.pings_mib for r in done)
        growth = statistics.median(r.rss_growth_mib for r in done)
        dropped = sum(r.dropped_after_s is not None for r in done)
        print(
            f"  {tree}: {pings:.1f} MiB of pings, RSS +{growth:.0f} MiB, "
            f"dropped in {dropped} of {len(done)} runs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
