"""The replay guard of a single node: pending claims in memory, outcomes in SQLite.

A pending claim guards a send in flight in this very process, so it lives and dies with
the process: after a restart the retry is processed again (at-least-once, clients drop
duplicates). A completed record is the first answer, kept for the replay window; it is in
SQLite, committed before `complete` returns (so before the sender hears `ok`), so that a
restart does not reopen the window.

Completed records are read on the reader connection, which never waits for a commit. That
read may start before a completion commits and answer after it, when the pending entry is
already gone; the re-check after the read must still find the record. So every completion
is also kept in memory (`_recent`, tagged with a sequence number `_epoch` taken after its
commit), and a read that found nothing is trusted only together with `_recent`:

- a completion numbered at or below the epoch seen when the read was submitted had
  committed by then, so the read's snapshot (taken later) has it;
- a later one is still in `_recent`, unless it was evicted (the oldest go first, past
  `RECENT_MAX`); then `_evicted_through` is at or above the read's epoch and the read is
  done again.

Atomicity of claim: the event loop runs one task at a time, so the checks of `_pending` and
`_recent` and the set that follows, with no await in between, cannot interleave with
another claim or completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from storage.embedded.database import SqliteDatabase
from storage.embedded.reader import SqliteReader
from storage.records import ReplayRecord, ReplayScope, SendOutcome

PURGE_INTERVAL_S: Final = 60.0  # expired completed rows, and expired pending claims
RECENT_MAX: Final = 8192  # completions kept in memory: far more than complete during a read

_Key = tuple[ReplayScope, bytes]


@dataclass(frozen=True, slots=True)
class _ClaimInFlight:
    message_id: bytes
    deadline: float  # on the monotonic clock
    settled: asyncio.Event  # set when the claim is completed, released or expires


@dataclass(frozen=True, slots=True)
class _Completed:
    epoch: int
    record: ReplayRecord
    expires_ms: int  # on the wall clock, as the row


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
        self._recent: dict[_Key, _Completed] = {}  # in epoch order
        self._epoch = 0
        self._evicted_through = 0  # the highest epoch evicted from _recent
        self._next_purge = monotonic()
        self._next_sweep = monotonic() + PURGE_INTERVAL_S

    async def lookup(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
        return await self._find((scope, nonce))

    async def claim(
        self, scope: ReplayScope, nonce: bytes, message_id: bytes, *, pending_ttl_s: float
    ) -> ReplayRecord | None:
        key = (scope, nonce)
        found = await self._find(key)
        if found is not None:
            return found
        # `_find` checked memory after its last await; from there to the set, none (see above).
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
        now_ms = self._now_ms()
        row = (
            scope.sender_user,
            scope.sender_device,
            scope.recipient_user,
            nonce,
            message_id,
            json.dumps(list(outcome.delivered)),
            json.dumps(list(outcome.stored)),
            now_ms + round(window_s * 1000),
        )
        purge = self._monotonic() >= self._next_purge
        if purge:
            self._next_purge = self._monotonic() + PURGE_INTERVAL_S

        wrote: list[bool] = []  # set by the job (worker thread) before `settled` runs (loop)

        def job(conn: sqlite3.Connection) -> None:
            if purge:
                conn.execute("DELETE FROM replay WHERE expires_ms <= ?", (now_ms,))
            # The first answer is kept for the window: an unexpired row is never replaced.
            cursor = conn.execute(
                "INSERT INTO replay (sender_user, sender_device, recipient_user, nonce,"
                " message_id, delivered, stored, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sender_user, sender_device, recipient_user, nonce) DO UPDATE"
                " SET message_id = excluded.message_id, delivered = excluded.delivered,"
                " stored = excluded.stored, expires_ms = excluded.expires_ms"
                " WHERE replay.expires_ms <= ?",
                (*row, now_ms),
            )
            wrote.append(cursor.rowcount > 0)

        key = (scope, nonce)
        record = ReplayRecord(message_id=message_id, outcome=outcome)
        expires_ms = row[-1]
        assert isinstance(expires_ms, int)

        def settled(committed: bool) -> None:
            # On the loop, before anyone resumes: the record is in `_recent` from the moment
            # it is committed, and only then may the pending entry go (see above).
            if committed:
                if wrote and wrote[0]:  # else the row of an earlier answer stays
                    self._remember(key, record, expires_ms)
                self._drop_if_held(key, message_id)

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
                    await asyncio.wait_for(entry.settled.wait(), remaining)
        return await self.lookup(scope, nonce)

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

    async def _find(self, key: _Key) -> ReplayRecord | None:
        """The pending claim or the unexpired completed record on `key`, or None."""
        while True:
            found = self._in_memory(key)
            if found is not None:
                return found
            epoch = self._epoch
            row = await self._completed(*key)
            if row is not None:
                return row
            found = self._in_memory(key)
            if found is not None or self._evicted_through <= epoch:
                return found
            # A completion after our read was submitted may have been evicted: read again.

    def _in_memory(self, key: _Key) -> ReplayRecord | None:
        held = self._held(key)
        if held is not None:
            return held
        recent = self._recent.get(key)
        if recent is not None and recent.expires_ms > self._now_ms():
            return recent.record
        return None

    def _remember(self, key: _Key, record: ReplayRecord, expires_ms: int) -> None:
        self._epoch += 1
        self._recent.pop(key, None)  # an expired record replaced: it moves to the end
        self._recent[key] = _Completed(self._epoch, record, expires_ms)
        while len(self._recent) > RECENT_MAX:
            oldest = next(iter(self._recent))
            self._evicted_through = self._recent.pop(oldest).epoch

    async def _completed(self, scope: ReplayScope, nonce: bytes) -> ReplayRecord | None:
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
                delivered=tuple(int(d) for d in json.loads(delivered)),
                stored=tuple(int(d) for d in json.loads(stored)),
            )
            return ReplayRecord(message_id=bytes(message_id), outcome=outcome)

        return await self._reader.read(job)
