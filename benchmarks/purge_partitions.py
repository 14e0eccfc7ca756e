"""What partitioning stored messages (schema version 6, migration 0006) does to the purge of
expired envelopes: the same rows in the plain table of version 5 and in the 16 hash
partitions of version 6, purged in the same run.

    python benchmarks/purge_partitions.py --rows 1000000 --users 20000

Two throwaway databases on the server of `--admin-dsn`, one migrated to version 5 and one to
version 6, each loaded with the same `--rows` stored rows (generate_series INSERTs, foreign
keys and count triggers off during the load, queue_counts counted afterwards), sent round
robin to `--users` devices, oldest first: the first `--expired` share of the rows (by seq)
expires at the first purge, the next share at each of the `--rounds` timed purges after it,
the rest stays. Before each purge a plain VACUUM ANALYZE, as autovacuum would.

- `explain`: the first purge, every chunk statement run under EXPLAIN (ANALYZE, BUFFERS):
  statements, wall time, rows the scans returned and removed by filter, shared buffers hit
  and read, summed over the statements;
- `store`: the next purges through the store's own code, timed (median of the rounds):
  version 5 with its statement (`seq = ANY(...)` over the whole table, the code before
  0006), version 6 with `PostgresMessageQueue.purge_expired` (one partition at a time).
  Version 5 is also purged by today's code (ctid, the plain table is its one "partition"),
  to tell the partitions' share from the statement's.

A benchmark, not a test: figures vary with the machine's load; the databases are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from storage.postgres.database import Database
from storage.postgres.messages import PURGE_CHUNK, PostgresMessageQueue, _purge_chunk
from storage.postgres.migrate import migrate

START_MS = 1_700_000_000_000
STEP_MS = 1_000  # between two stored rows' expiries, oldest first

# The statement of the purge of version 5 (storage/postgres/messages.py before 0006).
PURGE_V5 = (
    "DELETE FROM messages WHERE seq = ANY(ARRAY("
    " SELECT seq FROM messages WHERE expires_ms <= $1"
    " LIMIT $2 FOR UPDATE SKIP LOCKED))"
)
PARTITIONS = (
    "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
    " WHERE inhparent = 'messages'::regclass ORDER BY 1"
)

LOAD_USERS = """
INSERT INTO users (user_id, created_ms)
SELECT 'u' || i, $1 FROM generate_series(0, $2 - 1) AS i
"""
LOAD_DEVICES = """
INSERT INTO devices (user_id, device, identity_key, key_scheme, identity_x25519,
                     registration_id, created_ms, last_seen_ms)
SELECT 'u' || i, 1, '\\x05'::bytea, 'x25519', int8send(i), i, $1, $1
FROM generate_series(0, $2 - 1) AS i
"""
# Rows oldest first: row i (seq i + 1) expires at START_MS + i * STEP_MS. Sealed rows, as
# a production store with encryption at rest holds them: 120 bytes sealed, key 1.
LOAD_MESSAGES = """
INSERT INTO messages (seq, recipient_user, recipient_device, id, server_ts, expires_ms,
                      key_id, sealed)
SELECT i + 1, 'u' || (i % $2), 1, uuid_send(gen_random_uuid()), $1::bigint, $1::bigint + i * $3, 1,
       convert_to(repeat(md5(i::text), 4), 'UTF8') || int8send(i)
FROM generate_series(0::bigint, $4 - 1) AS i
"""


@dataclass
class Explained:
    statements: int = 0
    deleted: int = 0
    seconds: float = 0.0
    scanned: int = 0  # rows the scan nodes returned
    removed_by_filter: int = 0
    hit: int = 0
    read: int = 0
    planning_ms: float = 0.0
    nodes: set[str] = field(default_factory=set)

    def add(self, plan: dict[str, Any]) -> None:
        self.planning_ms += float(plan.get("Planning Time", 0.0))
        self._walk(plan["Plan"])
        self.hit += int(plan["Plan"].get("Shared Hit Blocks", 0))
        self.read += int(plan["Plan"].get("Shared Read Blocks", 0))

    def _walk(self, node: dict[str, Any]) -> None:
        kind = str(node["Node Type"])
        if "Scan" in kind:
            self.nodes.add(kind)
            loops = int(node.get("Actual Loops", 1))
            self.scanned += int(node.get("Actual Rows", 0)) * loops
            self.removed_by_filter += int(node.get("Rows Removed by Filter", 0)) * loops
        for child in node.get("Plans", []):
            self._walk(child)


async def _load(url: str, *, version: int, rows: int, users: int) -> None:
    await migrate(url, to=version)
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        await conn.execute(
            "INSERT INTO data_keys (id, purpose, state, created_ms, master_key_id, wrapped)"
            " VALUES (1, 'data', 'active', $1, 'bench', '\\x00'::bytea)",
            START_MS,
        )
        await conn.execute("SET session_replication_role = replica")  # no FK checks, triggers
        await conn.execute(LOAD_USERS, START_MS, users)
        await conn.execute(LOAD_DEVICES, START_MS, users)
        await conn.execute(LOAD_MESSAGES, START_MS, users, STEP_MS, rows)
        await conn.execute("RESET session_replication_role")
        await conn.execute("SELECT setval('messages_seq_seq', $1)", rows)
        await conn.execute(
            "INSERT INTO queue_counts (recipient_user, recipient_device, stored)"
            " SELECT recipient_user, recipient_device, count(*) FROM messages GROUP BY 1, 2"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def _explained_purge(url: str, now_ms: int) -> Explained:
    """The purge's chunk statements, each under EXPLAIN (ANALYZE, BUFFERS) (which runs it)."""
    found = Explained()
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        tables = [str(r["name"]) for r in await conn.fetch(PARTITIONS)]
        statements = [_purge_chunk(t) for t in tables] if tables else [PURGE_V5]
        started = time.perf_counter()
        for statement in statements:
            while True:
                text = await conn.fetchval(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", now_ms, PURGE_CHUNK
                )
                plan = json.loads(str(text))[0]
                found.add(plan)
                found.statements += 1
                # A DELETE node returns no rows: what it deleted is its outer child's count.
                outer = [p for p in plan["Plan"]["Plans"] if p["Parent Relationship"] == "Outer"]
                deleted = int(outer[0]["Actual Rows"])
                found.deleted += deleted
                if deleted < PURGE_CHUNK:
                    break
        found.seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return found


async def _v5_statement_purge(url: str, now_ms: int) -> int:
    """The purge of version 5's code, as it was."""
    total = 0
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        while True:
            status = await conn.execute(PURGE_V5, now_ms, PURGE_CHUNK)
            deleted = int(status.rsplit(" ", 1)[-1])
            total += deleted
            if deleted < PURGE_CHUNK:
                return total
    finally:
        await conn.close()


async def _store_purge(url: str, now_ms: int) -> int:
    db = await Database.open(url, timeout_s=600.0)
    try:
        return await PostgresMessageQueue(db).purge_expired(now_ms)
    finally:
        await db.close()


async def _vacuum(url: str) -> None:
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


async def _timed(purge: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    deleted = await purge()
    return time.perf_counter() - started, deleted


async def _sizes(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT sum(pg_table_size(c.oid)) AS heap, sum(pg_indexes_size(c.oid)) AS idx"
            " FROM pg_class c WHERE c.relkind = 'r'"
            " AND (c.relname = 'messages' OR c.relname LIKE 'messages\\_p%')"
        )
        assert row is not None
        return int(row["heap"]), int(row["idx"])
    finally:
        await conn.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--expired", type=float, default=0.10, help="share per purge")
    parser.add_argument("--rounds", type=int, default=3, help="timed purges after the first")
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get(
            "RELAY_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    if not 0 < args.expired * (args.rounds * 2 + 1) <= 1:
        parser.error("--expired times (2 * --rounds + 1) must be within (0, 1]")
    admin = await asyncpg.connect(args.admin_dsn)
    names = {
        5: f"relay_bench_purge5_{secrets.token_hex(4)}",
        6: f"relay_bench_purge6_{secrets.token_hex(4)}",
    }
    base = args.admin_dsn.rsplit("/", 1)[0]
    urls = {v: f"{base}/{name}" for v, name in names.items()}
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')
        share = int(args.rows * args.expired)
        for version, url in urls.items():
            started = time.perf_counter()
            await _load(url, version=version, rows=args.rows, users=args.users)
            heap, idx = await _sizes(url)
            print(
                f"v{version} loaded {args.rows} rows, {args.users} devices in"
                f" {time.perf_counter() - started:.1f} s; heap {heap / 2**20:.0f} MiB,"
                f" indexes {idx / 2**20:.0f} MiB"
            )

        # Expiry bands, oldest first: band b is every row below (b + 1) * share, by seq.
        def cutoff(band: int) -> int:
            return START_MS + ((band + 1) * share - 1) * STEP_MS

        print(f"\nexplain: the first purge, {share} rows expired ({args.expired:.0%})")
        for version, url in urls.items():
            found = await _explained_purge(url, cutoff(0))
            print(
                f"  v{version}: {found.statements} statements, {found.deleted} deleted in"
                f" {found.seconds:.2f} s; scans returned {found.scanned} rows, removed by"
                f" filter {found.removed_by_filter}; shared buffers hit {found.hit} read"
                f" {found.read}; planning {found.planning_ms:.1f} ms;"
                f" scans {sorted(found.nodes)}"
            )
        timings: dict[str, list[float]] = {
            "v5 statement": [],
            "v5 today's code": [],
            "v6 store": [],
        }
        band = 1
        cpu_before = _cpu_s()
        for _ in range(args.rounds):
            runs: list[tuple[str, str, Callable[[], Awaitable[int]]]] = [
                (
                    "v5 statement",
                    urls[5],
                    lambda u=urls[5], b=band: _v5_statement_purge(u, cutoff(b)),
                ),
                ("v6 store", urls[6], lambda u=urls[6], b=band: _store_purge(u, cutoff(b))),
            ]
            for label, url, purge in runs:
                await _vacuum(url)
                seconds, deleted = await _timed(purge)
                assert deleted == share, (label, deleted, share)
                timings[label].append(seconds)
            band += 1
            await _vacuum(urls[5])
            seconds, deleted = await _timed(lambda b=band: _store_purge(urls[5], cutoff(b)))
            assert deleted == share, ("v5 today's code", deleted, share)
            timings["v5 today's code"].append(seconds)
            # v6 skips this band too, so both schemas hold the same rows at the next round.
            await _store_purge(urls[6], cutoff(band))
            band += 1
        print(f"\nstore: {args.rounds} purges of {share} rows each, median (all rounds)")
        for label, values in timings.items():
            print(
                f"  {label}: {statistics.median(values):.2f} s"
                f" ({', '.join(f'{v:.2f}' for v in values)})"
            )
        v5 = statistics.median(timings["v5 statement"])
        v6 = statistics.median(timings["v6 store"])
        print(f"  v6 / v5 time: {v6 / v5:.2f}")
        print(f"  benchmark process CPU during the purges: {_cpu_s() - cpu_before:.2f} s")
    finally:
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
