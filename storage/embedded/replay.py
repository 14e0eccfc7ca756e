"""The replay guard of a single node: pending claims in memory, outcomes in SQLite.

A pending claim guards a send in flight in this very process, so it lives and dies with
the process: after a restart the retry is processed again (at-least-once, clients drop
duplicates). A completed record is the first answer, kept for the replay window; it is in
SQLite, committed before `complete` returns (so before the sender hears `ok`), so that a
restart does not reopen the window.

Completed records are read on the reader connection, at once, on the event loop: a claim
checks its pending entries, reads, and takes the nonce with no await in between, so it
cannot interleave with another claim. Nor can it slip between a completion's commit and
the drop of its pending entry: the entry goes in the completion's `settled` callback, on
the loop, after the commit; until then a claim finds the entry, from then on it reads the
committed row.

The claim of a nonce no record holds (nearly every send) does not read at all once the
filter of the records' keys is built (replay_filter): `complete` adds a key to it before
the record's insert is queued, so a committed record's key is always in it. The filter is
built in the background at the first claim: it joins the filters `complete` adds to, waits
until every insert queued before that is committed, then scans the table on a reader of
its own. Until then, and whenever the table is too large to filter, claims read as before.
It is built again once more keys were added than it was sized for (purged records' keys
stay in it until then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson

from storage.embedded.database import SqliteDatabase
from storage.embedded.reader import SqliteReader
from storage.embedded.replay_filter import KeyFilter, ReplayKey, capacity_for
from storage.errors import Unavailable
from storage.records import ReplayRecord, ReplayScope, SendOutcome

PURGE_INTERVAL_S: Final = 60.0  # expired completed rows, and expired pending claims
SCAN_CHUNK: Final = 1024  # rows per chunk of the filter's scan: about 3 ms of the loop each
BUILD_INTERVAL_S: Final = 600.0  # between two builds of the filter (or attempts)
_KEYS: Final = "SELECT sender_user, sender_device, recipient_user, nonce FROM replay"

log = logging.getLogger(__name__)

_Key = tuple[ReplayScope, bytes]


@dataclass(frozen=True, slots=True)
class _ClaimInFlight:
    message_id: bytes
    deadline: float  # on the monotonic clock
    settled: asyncio.Event  # set when the claim is completed, released or expires


class SqliteReplayGuard:
    def __init__(
        self,
        db: SqliteDatabase,
        reader: SqliteReader,
        *,
        now_ms: Callable[[], int],
        monotonic: Callable[[], float],
    ) -> None:
        self._db = db
        self._reader = reader
        self._now_ms = now_ms  # completed rows outlive the process: wall-clock expiry
        self._monotonic = monotonic  # pending claims do not: monotonic deadlines
        self._pending: dict[_Key, _ClaimInFlight] = {}
        self._next_purge = monotonic()
        self._next_sweep = monotonic() + PURGE_INTERVAL_S
        self._filter: KeyFilter | None = None  # None: not built (yet), every claim reads
        self._filling: list[KeyFilter] = []  # being built: `complete` adds to them too
        self._build: asyncio.Task[None] | None = None
        self._next_build = monotonic()

    async def lookup(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        held = self._held((scope, nonce))
        if held is not None:
            return held
        return self._recorded(scope, nonce)

    async def claim(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes, *, pending_ttl_s: float
    ) -> ReplayRecord | None:
        key = (scope, nonce)
        held = self._held(key)
        if held is not None:
            return held
        done = self._recorded(scope, nonce)
        if done is not None:
            return done
        # From the check of `_pending` to the set there is no await (see above).
        deadline = self._monotonic() + pending_ttl_s
        self._pending[key] = _ClaimInFlight(message_id, deadline, asyncio.Event())
        self._sweep()
        return None

    async def complete(
        self,
        scope: ReplayScope,
        nonce: bytes,
        message_id: bytes,
        outcome: SendOutcome,
        *,
        window_s: float,
    ) -> None:
        # In the filters before the insert is queued (no await from here to `run`).
        key: ReplayKey = (scope.sender_user, scope.sender_device, scope.recipient_user, nonce)
        built = self._filter
        if built is not None:
            built.add(key)
            if built.full:
                self._start_build()
        for filling in self._filling:
            filling.add(key)
        now_ms = self._now_ms()
        row = (
            scope.sender_user,
            scope.sender_device,
            scope.recipient_user,
            nonce,
            message_id,
            orjson.dumps(outcome.delivered).decode("ascii"),  # JSON arrays, "[1,2]"
            orjson.dumps(outcome.stored).decode("ascii"),
            now_ms + round(window_s * 1000),
        )
        purge = self._monotonic() >= self._next_purge
        if purge:
            self._next_purge = self._monotonic() + PURGE_INTERVAL_S

        def job(conn: sqlite3.Connection) -> None:
            if purge:
                conn.execute("DELETE FROM replay WHERE expires_ms <= ?", (now_ms,))
            # The first answer is kept for the window: an unexpired row is never replaced.
            conn.execute(
                "INSERT INTO replay (sender_user, sender_device, recipient_user, nonce,"
                " message_id, delivered, stored, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sender_user, sender_device, recipient_user, nonce) DO UPDATE"
                " SET message_id = excluded.message_id, delivered = excluded.delivered,"
                " stored = excluded.stored, expires_ms = excluded.expires_ms"
                " WHERE replay.expires_ms <= ?",
                (*row, now_ms),
            )

        def settled(committed: bool) -> None:
            # On the loop once committed, before the caller resumes (see above); a failed
            # completion keeps the claim, which its caller then releases or lets expire.
            if committed:
                self._drop_if_held((scope, nonce), message_id)

        await self._db.run(job, settled=settled)

    async def release(self, scope: ReplayScope, nonce: bytes, message_id: bytes) -> None:
        self._drop_if_held((scope, nonce), message_id)

    async def wait_outcome(
        self, scope: ReplayScope, nonce: bytes, *, timeout_s: float
    ) -> ReplayRecord | None:
        entry = self._pending.get((scope, nonce))
        if entry is not None:
            remaining = min(timeout_s, entry.deadline - self._monotonic())
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await entry.settled.wait()
        return await self.lookup(scope, nonce)

    def drop_pending(self) -> None:
        """Drop every pending claim (its waiters wake and read the store): the ids and nonces
        they are keyed by were blinded under them (ClearData). A claim's send then ends as
        one whose claim expired: its completion writes the record all the same."""
        for key, entry in list(self._pending.items()):
            self._drop(key, entry)
        # So were the filters' keys: build them again from the blinded table.
        self._filter = None
        if self._build is not None:
            self._build.cancel()

    async def close(self) -> None:
        """Stop a filter being built."""
        build = self._build
        if build is not None:
            build.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build

    async def build_filter(self) -> None:
        """Build the filter of the records' keys and answer claims from it from now on
        (see the module's docstring). Raises Unavailable; the filter in use, if any, stays."""
        scan = SqliteReader.open(self._db.path)
        try:
            started = time.perf_counter()
            (records,) = await scan.read_off_loop(
                lambda conn: conn.execute("SELECT COUNT(*) FROM replay").fetchone()
            )
            capacity = capacity_for(records)
            if capacity is None:
                log.info("%d replay records: too many to filter, claims read them", records)
                return
            fresh = KeyFilter(capacity)
            self._filling.append(fresh)
            try:
                # Every insert queued before `fresh` joined is committed before the scan.
                await self._db.run(_nothing)
                async for rows in scan.chunks(_KEYS, size=SCAN_CHUNK):
                    for sender, device, recipient, nonce in rows:
                        fresh.add((sender, device, recipient, nonce))
            finally:
                self._filling.remove(fresh)
            self._filter = fresh
            log.info(
                "replay filter built: %d records, room for %d keys, in %.0f ms",
                records,
                capacity,
                (time.perf_counter() - started) * 1000,
            )
        finally:
            scan.close()

    def _start_build(self) -> None:
        if self._build is None and self._monotonic() >= self._next_build:
            self._build = asyncio.get_running_loop().create_task(self._building())

    async def _building(self) -> None:
        try:
            await self.build_filter()
        except Unavailable as exc:
            log.warning("replay filter not built, claims read the table: %s", exc)
        finally:
            self._build = None
        # Not after a cancellation (drop_pending): the next claim starts again at once.
        self._next_build = self._monotonic() + BUILD_INTERVAL_S

    def _recorded(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        """The completed record, read unless the filter says there is none."""
        built = self._filter
        if built is None:
            self._start_build()
        elif not built.may_hold(
            (scope.sender_user, scope.sender_device, scope.recipient_user, nonce)
        ):
            return None
        return self._completed(scope, nonce)

    def _held(self, key: _Key) -> ReplayRecord | None:
        """The unexpired pending claim on `key` as a record; an expired one is dropped."""
        entry = self._pending.get(key)
        if entry is None:
            return None
        if entry.deadline <= self._monotonic():
            self._drop(key, entry)
            return None
        return ReplayRecord(message_id=entry.message_id, outcome=None)

    def _drop_if_held(self, key: _Key, message_id: bytes) -> None:
        entry = self._pending.get(key)
        if entry is not None and entry.message_id == message_id:
            self._drop(key, entry)

    def _drop(self, key: _Key, entry: _ClaimInFlight) -> None:
        del self._pending[key]
        entry.settled.set()

    def _sweep(self) -> None:
        """Drop expired pending claims now and then, so that abandoned ones cannot pile up."""
        now = self._monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + PURGE_INTERVAL_S
        for key, entry in list(self._pending.items()):
            if entry.deadline <= now:
                self._drop(key, entry)

    def _completed(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        now_ms = self._now_ms()

        def job(conn: sqlite3.Connection) -> ReplayRecord | None:
            row = conn.execute(
                "SELECT message_id, delivered, stored FROM replay"
                " WHERE sender_user = ? AND sender_device = ? AND recipient_user = ?"
                " AND nonce = ? AND expires_ms > ?",
                (scope.sender_user, scope.sender_device, scope.recipient_user, nonce, now_ms),
            ).fetchone()
            if row is None:
                return None
            message_id, delivered, stored = row
            outcome = SendOutcome(
                delivered=tuple(int(d) for d in orjson.loads(delivered)),
                stored=tuple(int(d) for d in orjson.loads(stored)),
            )
            return ReplayRecord(message_id=bytes(message_id), outcome=outcome)

        return self._reader.read(job)


def _nothing(conn: sqlite3.Connection) -> None:
    """A job that only waits its turn: what was queued before it is committed when it ends."""
