"""Look for plaintexts in everything a relay stored: SQLite rows and files, PostgreSQL, Redis.

Each plaintext is searched as raw bytes, hex, and base64 and base64url at all
three alignments (so an occurrence inside a larger encoded blob is found too).
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis
from e2e.stores import REDIS_URL
from e2e.support import RelayProcess


@dataclass(frozen=True)
class Finding:
    where: str
    plaintext: bytes
    form: str


def needles(plaintext: bytes) -> list[tuple[str, bytes]]:
    """The forms a plaintext could take in a store: raw, hex, base64 (both alphabets)."""
    forms = [("raw", plaintext), ("hex", plaintext.hex().encode())]
    for align in range(3):
        for name, encode in (
            ("base64", base64.b64encode),
            ("base64url", base64.urlsafe_b64encode),
        ):
            encoded = encode(b"\0" * align + plaintext)
            # Drop the characters that mix in the padding bytes or the end.
            start = -(-align * 4 // 3) if align else 0
            core = encoded[start + 1 if align else 0 : -4]
            forms.append((f"{name}@{align}", core))
    return forms


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def _search(where: str, blob: bytes, plaintexts: Iterable[bytes]) -> Iterator[Finding]:
    lowered = blob.lower()
    for plaintext in plaintexts:
        for form, needle in needles(plaintext):
            hay = lowered if form == "hex" else blob
            if needle and needle in hay:
                yield Finding(where, plaintext, form)


def sqlite_rows(data_dir: Path) -> Iterator[tuple[str, bytes]]:
    """Every column of every row of every table of every SQLite file in the data dir."""
    for path in sorted(data_dir.glob("*.sqlite3")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            for table in tables:
                for i, row in enumerate(conn.execute(f'SELECT * FROM "{table}"')):
                    yield f"{path.name}:{table}[{i}]", b"\x00".join(_as_bytes(v) for v in row)
        finally:
            conn.close()


def data_files(data_dir: Path) -> Iterator[tuple[str, bytes]]:
    """The raw bytes of every file the relay keeps (the WAL and free pages included)."""
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        yield f"file {path.name}", path.read_bytes()


async def _postgres_rows(url: str) -> list[tuple[str, bytes]]:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        out: list[tuple[str, bytes]] = []
        for t in tables:
            name = f'"{t["table_schema"]}"."{t["table_name"]}"'
            for i, row in enumerate(await conn.fetch(f"SELECT * FROM {name}")):
                out.append((f"{name}[{i}]", b"\x00".join(_as_bytes(v) for v in row.values())))
        return out
    finally:
        await conn.close()


def redis_values(prefix: str) -> Iterator[tuple[str, bytes]]:
    """Every key under the relay's prefix with its value, whatever the Redis type."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = _as_bytes(client.type(key))
            parts: list[object]
            if kind == b"string":
                parts = [client.get(key)]
            elif kind == b"hash":
                parts = [f for pair in client.hgetall(key).items() for f in pair]
            elif kind == b"list":
                parts = list(client.lrange(key, 0, -1))
            elif kind == b"set":
                parts = list(client.smembers(key))
            elif kind == b"zset":
                parts = list(client.zrange(key, 0, -1))
            else:
                parts = []
            yield f"redis {key!r}", b"\x00".join(_as_bytes(p) for p in [key, *parts])
    finally:
        client.close()


async def scan_relay(relay: RelayProcess, plaintexts: list[bytes]) -> tuple[list[Finding], int]:
    """Everything the relay stored, searched; the findings and how many records were read."""
    records: list[tuple[str, bytes]] = []
    url = relay.extra_env.get("RELAY_DATABASE_URL")
    if url is None:
        records += sqlite_rows(relay.data_dir)
        records += data_files(relay.data_dir)
    else:
        records += await _postgres_rows(url)
        prefix = relay.extra_env["RELAY_REDIS_PREFIX"]
        records += await asyncio.to_thread(lambda: list(redis_values(prefix)))
    findings = [f for where, blob in records for f in _search(where, blob, plaintexts)]
    return findings, len(records)


async def scan_database(relay: RelayProcess, plaintexts: list[bytes]) -> tuple[list[Finding], int]:
    """What a stolen disk or database dump shows: the SQLite file with its WAL (rows and raw
    bytes), or every PostgreSQL table; not Redis, which keeps nothing on disk here."""
    url = relay.extra_env.get("RELAY_DATABASE_URL")
    if url is None:
        records = [*sqlite_rows(relay.data_dir), *data_files(relay.data_dir)]
    else:
        records = await _postgres_rows(url)
    findings = [f for where, blob in records for f in _search(where, blob, plaintexts)]
    return findings, len(records)


def scan_directory(directory: Path, plaintexts: list[bytes]) -> tuple[list[Finding], int]:
    """Every file under a directory (a client's local store), searched."""
    records = list(data_files(directory))
    findings = [f for where, blob in records for f in _search(where, blob, plaintexts)]
    return findings, len(records)
