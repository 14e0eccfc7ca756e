"""What the key backup extension costs a relay: `backup.put`, `backup.get` and
`backup.recover` (a new connection, the recovery, the close) one after another from one
client, on the embedded store and, with `--admin-dsn`, on PostgreSQL + Redis, both with
encryption at rest (the default: the blob sealed once more with the data key).

    python benchmarks/key_backup.py --rounds 3 --count 200 --size 16384 \
        --admin-dsn postgresql://postgres@127.0.0.1:5432/postgres

Prints each round's median and p99 latency per operation, then the medians over the rounds.
Requests are sequential: the figures are per-request latency on an idle relay, not a
throughput. A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from send_paths import FMT, production_env, register, start_relay
from websockets.asyncio.client import ClientConnection, connect

from protocol.codec import decode_server_frame, encode
from protocol.frames import (
    Answer,
    BackupGet,
    BackupOk,
    BackupPut,
    BackupPutOk,
    BackupRecover,
    Challenge,
    Request,
)
from protocol.payloads import backup_recover_payload
from protocol.signatures import IdentityKeyPair, KeyScheme

OPERATIONS = ("put", "get", "recover")


async def ask(ws: ClientConnection, frame: Request, answer: type[Answer]) -> Answer:
    await ws.send(encode(frame, FMT))
    while True:
        got = decode_server_frame(await ws.recv(), FMT, lambda rid: answer)
        if isinstance(got, answer):
            return got
        if getattr(got, "T", "") == "error":
            raise RuntimeError(f"refused: {got}")


async def one_round(url: str, count: int, size: int) -> dict[str, list[float]]:
    ws, _, _ = await register(url)
    access = IdentityKeyPair.generate(KeyScheme.ED25519)
    times: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    version = 0
    for _ in range(count):
        start = time.perf_counter()
        put = BackupPut(rid=1, version=version, blob=os.urandom(size), access_key=access.public_key)
        answer = await ask(ws, put, BackupPutOk)
        times["put"].append(time.perf_counter() - start)
        assert isinstance(answer, BackupPutOk)
        version = answer.version
        start = time.perf_counter()
        await ask(ws, BackupGet(rid=2), BackupOk)
        times["get"].append(time.perf_counter() - start)
        start = time.perf_counter()
        async with connect(url, max_size=None) as fresh:
            challenge = decode_server_frame(await fresh.recv(), FMT, lambda rid: None)
            assert isinstance(challenge, Challenge)
            signature = access.sign(backup_recover_payload(challenge.nonce, access.public_key))
            recover = BackupRecover(rid=1, access_key=access.public_key, signature=signature)
            await ask(fresh, recover, BackupOk)
        times["recover"].append(time.perf_counter() - start)
    await ws.close()
    return times


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=200, help="of each operation per round")
    parser.add_argument("--size", type=int, default=16 * 1024, help="blob bytes")
    parser.add_argument("--admin-dsn", default="", help="also PostgreSQL + Redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    modes = [("embedded", argparse.Namespace(admin_dsn="", redis_url=""))]
    if args.admin_dsn:
        modes.append(("postgresql+redis", args))
    for name, mode_args in modes:
        with tempfile.TemporaryDirectory() as tmp, production_env(mode_args) as env:
            extra = ("--rate-backup-reads", str(10 * args.count * args.rounds))
            proc, url = start_relay(Path(tmp) / "relay", env, *extra)
            try:
                medians: dict[str, list[float]] = {op: [] for op in OPERATIONS}
                for n in range(args.rounds):
                    times = asyncio.run(one_round(url, args.count, args.size))
                    shown = "  ".join(
                        f"{op} p50 {_ms(times[op], 0.5):.2f} ms p99 {_ms(times[op], 0.99):.2f} ms"
                        for op in OPERATIONS
                    )
                    print(f"{name} round {n + 1}: {shown}", flush=True)
                    for op in OPERATIONS:
                        medians[op].append(_ms(times[op], 0.5))
                summary = "  ".join(
                    f"{op} {statistics.median(medians[op]):.2f} ms" for op in OPERATIONS
                )
                print(f"{name} median of round medians ({args.size} B blobs): {summary}")
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
