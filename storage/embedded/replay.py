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

The claim of a nonce no record holds (nearly every send) does not read once the filter of
the records' keys is built (key_filter): `complete` adds a record's key before its insert
is queued, so a committed record's key is always in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from storage.embedded.database import SqliteDatabase
from storage.embedded.key_filter import TableKeys
from storage.embedded.reader import SqliteReader
from storage.records import ReplayRecord, ReplayScope, SendOutcome

PURGE_INTERVAL_S: Final = 60.0  # expired completed rows, and expired pending claims

ReplayKey = tuple[str, int, str, bytes]
"""sender user, sender device, recipient user, nonce: the replay table's primary key."""

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
        self._keys = TableKeys(
            db.path,
            db.committed,
            table="replay",
            key_columns="sender_user, sender_device, recipient_user, nonce",
            key_of=_replay_key,
            monotonic=monotonic,
        )

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
        # In the filter before the insert is queued (no await from here to `run`).
        self._keys.add((scope.sender_user, scope.sender_device, scope.recipient_user, nonce))
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
        self._keys.reset()  # so were the filter's keys

    async def close(self) -> None:
        """Stop a filter being built."""
        await self._keys.close()

    async def build_filter(self) -> None:
        """Build the filter of the records' keys now (else at the first claim)."""
        await self._keys.build()

    def _recorded(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        """The completed record, read unless the filter says there is none."""
        key = (scope.sender_user, scope.sender_device, scope.recipient_user, nonce)
        if not self._keys.may_hold(key):
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


def _replay_key(row: tuple[Any, ...]) -> ReplayKey:
    sender, device, recipient, nonce = row
    return (sender, device, recipient, nonce)
