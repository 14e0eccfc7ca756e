"""Stored envelopes in PostgreSQL (the MessageQueue interface), written by group commit.

Every `store` and `ack` is queued for one writer task, which takes every call waiting at
that moment (up to MAX_BATCH_ROWS envelopes and ids) and applies them IN SUBMISSION ORDER
in one transaction (consecutive stores as one executemany, consecutive acks as another),
commits once (synchronous_commit on), then answers each caller. So one fsync serves many
callers, and an ack issued after a store of the same envelope is applied after it.

If a batch fails on something other than the connection (one bad row, a deadlock with
another node), each of its calls is applied again alone, so one call's failure is its own.

A `store` with `max_per_device` is refused as a whole (QueueFull) when one of its devices
already holds that many envelopes: the insert reads the device's count itself (no extra
statement while every row goes in), and only when a row was left out does a second
statement ask why; a refusal rolls the batch back and applies it again without that call.

Reads (`fetch`, `queue_state`, `pending_origins`) first wait for the writes to the same
device queued before them, so an ack issued before a fetch is applied before it. The
`pending_origins` lookups of many sends then share one statement (origins.OriginLookups).

Encryption at rest (storage.at_rest.sealing): `store` seals each envelope with the queue's
sealer before queueing it, so a sealed row carries its data key's id and the sealed bytes,
its sender, time, type, body and nonce NULL (migration 0005); `ClearSealer`, the default,
writes the clear columns as before. `fetch` and `pending_origins` open sealed rows and skip
a row that does not open (the sealer reports it): never delivered half-read.

Shared payloads (`send.multi`, migration 0007): an envelope naming one stores its header in
its row, and the payload goes once into shared_payloads (sealed apart), in the same
transaction, before the rows naming it; `fetch` joins it back. A trigger deletes a payload
with the last message naming it; a payload whose rows all went elsewhere (stored already,
device removed) is deleted before the commit, and one left behind by a race goes with the
purge once expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from storage.at_rest.sealing import ClearSealer, EnvelopeSealer, receipt_column
from storage.errors import QueueFull, StorageError, Unavailable
from storage.postgres.database import (
    Connection,
    Database,
    ForeignKeyViolation,
    Row,
    is_connection_failure,
)
from storage.postgres.device_reads import DEVICE_KEYS, DeviceReads
from storage.postgres.origins import OriginLookups
from storage.postgres.read_replica import LagTolerantReads
from storage.records import (
    Envelope,
    OpenedFields,
    PendingOrigin,
    SharedPayload,
    StoredEnvelope,
    receipt_envelope,
)

MAX_BATCH_ROWS: Final = 2000  # envelopes + acked ids in one transaction
PURGE_CHUNK: Final = 5000  # expired rows per statement, so a big purge holds few locks

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, recipient_user, recipient_device, sender_user, sender_device,"
    " ts, server_ts, type, body, nonce, expires_ms, key_id, sealed, payload_id"
)
# A fetched row: the message's columns, then those of the shared payload it names, if any.
_FETCHED = (
    ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(","))
    + ", p.body AS payload_body, p.key_id AS payload_key_id, p.sealed AS payload_sealed"
    + ", p.payload_id IS NOT NULL AS payload_found"
)

# A payload before the rows naming it. One stored already (another store call of the same
# frame, or its retry) is kept: ON CONFLICT waits for a transaction deleting it, and inserts
# it again if that one committed.
_INSERT_PAYLOAD = """
INSERT INTO shared_payloads (payload_id, body, key_id, sealed, expires_ms)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (payload_id) DO NOTHING
"""
# A payload no message names (its rows all went elsewhere): deleted before the commit, in a
# savepoint whose foreign-key failure (another transaction just stored a row naming it) is
# ignored. See migration 0007 for the concurrency argument.
_DROP_UNUSED_PAYLOADS = """
DELETE FROM shared_payloads p
WHERE p.payload_id = ANY($1::bytea[])
  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.payload_id = p.payload_id)
"""
# Expired payloads that no message names any more (those the trigger could not delete).
_PURGE_PAYLOADS = """
DELETE FROM shared_payloads WHERE ctid = ANY(ARRAY(
    SELECT p.ctid FROM shared_payloads p
    WHERE p.expires_ms <= $1
      AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.payload_id = p.payload_id)
    LIMIT $2 FOR UPDATE SKIP LOCKED))
"""

# Concurrency argument of the insert:
# * Only for an active device: FOR KEY SHARE on its row conflicts with the FOR UPDATE lock
#   that remove_device takes first. If the removal got there first, the lock waits for its
#   commit, re-checks `removed_ms IS NULL` on the new row version, finds it false and
#   inserts nothing; if we got there first, the removal waits for our commit and its DELETE
#   then sees (and deletes) our rows. KEY SHARE does not conflict with touch() or uploads.
# * A sealed row's key ($12) is checked by the foreign key to data_keys, whose FOR KEY SHARE
#   lock keeps the key from being deleted until we commit (storage/postgres/data_keys.py);
#   a key deleted already makes the insert fail, never leaves a row no key opens.
# * A (device, id) already stored is kept as is (a retried store is a no-op), also when
#   two nodes store it at once: the unique index makes the second wait for the first and
#   then do nothing. Only that uniqueness conflict is ignored.
# * The cap ($16, NULL: none) reads the device's count of stored rows, which triggers keep
#   in queue_counts (migration 0003): one index lookup, whatever the queue's length. The
#   batch holds the device's advisory lock (_LOCK_DEVICES), so no other batch changes that
#   count until we commit, and each statement of the executemany sees the count as the
#   statements before it left it.
_INSERT = f"""
INSERT INTO messages ({_COLUMNS}, receipt)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
WHERE EXISTS (
    SELECT 1 FROM devices
    WHERE user_id = $2 AND device = $3 AND removed_ms IS NULL
    FOR KEY SHARE
) AND (
    $16::bigint IS NULL
    OR COALESCE((
        SELECT stored FROM queue_counts WHERE recipient_user = $2 AND recipient_device = $3
    ), 0) < $16
)
ON CONFLICT (recipient_user, recipient_device, id) DO NOTHING
RETURNING recipient_user, recipient_device, id
"""

# Every device a batch touches is locked for the rest of the transaction, in one global
# order (sorted keys), so batches of several processes never deadlock on each other, and
# the stores of one device commit in the order their seq values were drawn: a drain that
# has read up to seq N will never later see a row with a seq below N appear.
_LOCK_DEVICES = """
SELECT pg_advisory_xact_lock(k)
FROM (
    SELECT DISTINCT hashtextextended(u || '/' || d::text, 0) AS k
    FROM unnest($1::text[], $2::int[]) AS t(u, d)
    ORDER BY k
) AS keys
"""

# The delete of an ack hands back only the rows whose `receipt` column holds a tag the ack
# computed for one of its ids (a copy asking for a receipt, storage.at_rest.sealing): the
# common ack, of copies that asked for none, transfers nothing back.
_ACK = """
WITH gone AS (
    DELETE FROM messages
    WHERE recipient_user = $1 AND recipient_device = $2 AND id = ANY($3::bytea[])
    RETURNING seq, id, recipient_user, recipient_device, sender_user, sender_device, ts,
        server_ts, type, body, nonce, expires_ms, key_id, sealed, receipt
)
SELECT * FROM gone WHERE receipt = ANY($4::bytea[])
"""

_ACTIVE_DEVICES = (
    "SELECT user_id, device FROM devices"
    " WHERE user_id = ANY($1::text[]) AND removed_ms IS NULL ORDER BY user_id, device"
)

# A device without rows is still answered (an aggregate always has a row): 0 messages,
# highest seq 0. LATERAL, so that every plan, the generic one it runs with included, reads
# each device's rows by index, in its partition alone (a join and GROUP BY had a generic
# plan that scanned every partition whole).
_QUEUE_STATES = f"""
SELECT q.n, s.live, s.highest
FROM {DEVICE_KEYS}
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE m.expires_ms > q.at) AS live,
           COALESCE(max(m.seq), 0) AS highest
    FROM messages m
    WHERE m.recipient_user = q.u AND m.recipient_device = q.d
) AS s
"""
# The partitions of messages (schema version 6), as quoted names; none: a plain table.
_PARTITIONS = (
    "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
    " WHERE inhparent = 'messages'::regclass ORDER BY 1"
)


def _purge_chunk(table: str) -> str:
    """Up to $2 rows of `table` expired at $1 deleted; `table` is a name PostgreSQL quoted."""
    return (
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f" SELECT ctid FROM {table} WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))"
    )


_Device = tuple[str, int]
# id, recipient user and device, the clear fields (sender user and device, ts, server ts,
# type, body, nonce; all but server ts None when sealed), expiry, key id (None: clear), sealed,
# the shared payload's id, the receipt column (storage.at_rest.sealing.receipt_column).
_InsertRow = tuple[
    bytes,
    str,
    int,
    str | None,
    int | None,
    int | None,
    int,
    int | None,
    bytes | None,
    bytes | None,
    int,
    int | None,
    bytes | None,
    bytes | None,
    bytes | None,
]
# payload id, body (None when sealed), key id (None: clear), sealed, expiry.
_PayloadRow = tuple[bytes, bytes | None, int | None, bytes | None, int]
_RowKey = tuple[str, int, bytes]  # (recipient user, device, id)


@dataclass(slots=True)
class _Op:
    """One store() or ack() call."""

    future: asyncio.Future[None]
    inserts: list[_InsertRow] = field(default_factory=list)
    payloads: list[_PayloadRow] = field(default_factory=list)
    ack: tuple[str, int, list[bytes]] | None = None
    max_per_device: int | None = None  # stores: the cap of stored envelopes per device
    # acks: the receipt tags looked for, the time and name a receipt carries, and the
    # receipts made (filled again each time the call is applied: a rolled-back try made none)
    receipt_tags: list[bytes] = field(default_factory=list)
    now_ms: int = 0
    named: str = ""
    receipts: list[Envelope] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.inserts) + (0 if self.ack is None else len(self.ack[2]))

    def devices(self) -> set[_Device]:
        found = {(row[1], row[2]) for row in self.inserts}
        if self.ack is not None:
            found.add((self.ack[0], self.ack[1]))
        return found


class PostgresMessageQueue:
    def __init__(
        self,
        db: Database,
        *,
        max_batch_rows: int = MAX_BATCH_ROWS,
        reads: LagTolerantReads | None = None,
    ) -> None:
        self._db = db
        # stored_count alone may lag (a gauge); every other read follows the commits.
        self._reads = reads or LagTolerantReads(db)
        self._max_batch_rows = max_batch_rows
        self._queue: deque[_Op] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        # The newest write queued for each device, for reads to wait on.
        self._last_write: dict[_Device, asyncio.Future[None]] = {}
        self._sealer: EnvelopeSealer = ClearSealer()
        self._origins = OriginLookups(db, self._sealer)
        self._queue_states = DeviceReads(db, _QUEUE_STATES, "queue_state", generic_plans=True)
        # Group commit figures: envelopes_committed / batches_committed is the mean group.
        self.batches_committed = 0
        self.envelopes_committed = 0
        self.acks_committed = 0

    @property
    def queue_state_reads(self) -> DeviceReads:
        """The batched `queue_state` reads (their statement counts)."""
        return self._queue_states

    @property
    def origins(self) -> OriginLookups:
        """Its counters tell how many lookups shared each statement."""
        return self._origins

    def use_sealer(self, sealer: EnvelopeSealer) -> None:
        """Seal the envelopes stored from now on with `sealer`, and open sealed rows with it
        (made once the store is open: the data keys are read from it)."""
        self._sealer = sealer
        self._origins.use_sealer(sealer)

    async def store(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_per_device: int | None = None,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        if not envelopes:
            return
        sealer = self._sealer
        if stored_as is None:
            inserts = [_insert_row(e, sealer, e.recipient_user) for e in envelopes]
        else:
            inserts = [_insert_row(e, sealer, stored_as(e.recipient_user)) for e in envelopes]
        payloads = _payload_rows(envelopes, sealer)
        op = _Op(
            self._new_future(), inserts=inserts, payloads=payloads, max_per_device=max_per_device
        )
        await self._submit(op)

    async def ack(
        self,
        user: str,
        device: int,
        ids: Sequence[bytes],
        *,
        now_ms: int | None = None,
        named: str | None = None,
    ) -> list[Envelope]:
        if not ids:
            return []
        unique = list(dict.fromkeys(ids))
        sealer = self._sealer
        tags = {sealer.receipt_tag(user, device, i, wanted=True) for i in unique}
        op = _Op(
            self._new_future(),
            ack=(user, device, unique),
            receipt_tags=sorted(tag for tag in tags if tag is not None),
            now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
            named=named or user,
        )
        await self._submit(op)
        return op.receipts

    async def fetch(
        self,
        user: str,
        device: int,
        *,
        after_seq: int,
        limit: int,
        now_ms: int,
        named: str | None = None,
    ) -> list[StoredEnvelope]:
        await self._writes_before((user, device))
        async with self._db.connection("fetch_messages") as conn:
            rows = await conn.fetch(
                f"SELECT m.seq, {_FETCHED}"
                " FROM messages m LEFT JOIN shared_payloads p ON p.payload_id = m.payload_id"
                " WHERE m.recipient_user = $1 AND m.recipient_device = $2 AND m.seq > $3"
                " AND m.expires_ms > $4 ORDER BY m.seq LIMIT $5",
                user,
                device,
                after_seq,
                now_ms,
                limit,
            )
        return await _opened(rows, self._sealer, user if named is None else named)

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        await self._writes_before((user, device))
        # Batched with the other reads of this event-loop turn (device_reads.DeviceReads).
        row = await self._queue_states.read(user, device, now_ms)
        assert row is not None
        return int(row["live"]), int(row["highest"])

    async def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        if not devices:
            return []
        wanted = sorted(set(devices))
        for device in wanted:
            await self._writes_before((user, device))
        return await self._origins.lookup(user, wanted, message_id)

    async def purge_expired(self, now_ms: int) -> int:
        # One partition at a time (migration 0006), each through its own expiry index, in
        # chunks of PURGE_CHUNK rows found and deleted by ctid (a TID scan, no second index
        # lookup). SKIP LOCKED: rows that a batch is deleting (acks) are left to it; the
        # purge never waits on a row lock, so it cannot deadlock with the writers.
        async with self._db.connection("purge_partitions") as conn:
            rows = await conn.fetch(_PARTITIONS)
        tables = [str(row["name"]) for row in rows] or ["messages"]
        total = 0
        for table in tables:
            while True:
                async with self._db.connection("purge_expired") as conn:
                    status = await conn.execute(_purge_chunk(table), now_ms, PURGE_CHUNK)
                deleted = int(status.rsplit(" ", 1)[-1])
                total += deleted
                if deleted < PURGE_CHUNK:
                    break
        # The shared payloads expired with their messages (one expiry per frame); those the
        # trigger left behind go here.
        while True:
            try:
                async with self._db.connection("purge_expired_payloads") as conn:
                    status = await conn.execute(_PURGE_PAYLOADS, now_ms, PURGE_CHUNK)
            except Unavailable as exc:  # a message stored meanwhile names one: next purge
                log.warning("purging expired shared payloads stopped: %s", exc)
                break
            if int(status.rsplit(" ", 1)[-1]) < PURGE_CHUNK:
                break
        return total

    async def stored_count(self) -> int:
        count = await self._reads.run(
            "stored_count", lambda conn: conn.fetchval("SELECT count(*) FROM messages")
        )
        assert isinstance(count, int)
        return count

    async def close(self) -> None:
        """Apply the calls already queued, then refuse new ones."""
        self._closed = True
        self._wakeup.set()
        if self._writer is not None:
            await asyncio.shield(self._writer)
        await self._origins.close()
        await self._queue_states.close()

    # The writer.

    def _new_future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, op: _Op) -> None:
        """Queue now (at call time, so the order of calls is the order applied), then wait."""
        if self._closed:
            raise Unavailable("the message queue is closed")
        self._queue.append(op)
        for device in op.devices():
            self._last_write[device] = op.future
        if self._writer is None or self._writer.done():
            # First use, or the writer ended: nothing queued may wait for a writer that is gone.
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="relay-postgres-writer"
            )
        self._wakeup.set()
        try:
            # Shielded: a cancelled caller does not cancel the write (it may still commit).
            await asyncio.shield(op.future)
        except asyncio.CancelledError:
            op.future.add_done_callback(_consume)
            raise

    async def _writes_before(self, device: _Device) -> None:
        pending = self._last_write.get(device)
        if pending is not None and not pending.done():
            await asyncio.wait([pending])

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._take_batch()
                try:
                    await self._commit(batch)
                except asyncio.CancelledError as exc:  # nobody may wait forever
                    for op in batch:
                        _settle(op.future, Unavailable(f"the writer stopped: {exc!r}"))
                    self._fail_queued()
                    raise
                except Exception as exc:
                    # Whatever went wrong with this batch, the writer goes on with the next:
                    # a dead writer would leave every later store and ack waiting forever.
                    log.exception("group commit failed unexpectedly")
                    for op in batch:
                        _settle(op.future, Unavailable(f"postgresql: {type(exc).__name__}"))
                finally:
                    for op in batch:
                        for device in op.devices():
                            if self._last_write.get(device) is op.future:
                                del self._last_write[device]
            if self._closed:
                return

    def _take_batch(self) -> list[_Op]:
        batch = [self._queue.popleft()]
        rows = batch[0].size
        while self._queue and rows + self._queue[0].size <= self._max_batch_rows:
            op = self._queue.popleft()
            rows += op.size
            batch.append(op)
        return batch

    def _fail_queued(self) -> None:
        while self._queue:
            _settle(self._queue.popleft().future, Unavailable("the writer stopped"))

    async def _commit(self, batch: list[_Op]) -> None:
        try:
            await self._apply_capped(batch)
        except Unavailable as exc:
            if len(batch) == 1 or is_connection_failure(exc):
                log.warning("group commit of %d calls failed: %s", len(batch), exc)
                for op in batch:
                    _settle(op.future, exc)
                return
            log.warning("group commit failed (%s); applying its %d calls alone", exc, len(batch))
            for op in batch:
                try:
                    await self._apply_capped([op])
                except Unavailable as alone:
                    _settle(op.future, alone)
                else:
                    _settle(op.future, None)
            return
        for op in batch:
            _settle(op.future, None)

    async def _apply_capped(self, batch: list[_Op]) -> None:
        """Apply the batch in one transaction; the stores that would pass a device's cap are
        answered QueueFull, and the rest applied again without them (each round drops at least
        one call, so this ends)."""
        while batch:
            try:
                await self._apply_in_one_transaction(batch)
                return
            except _OverCap as over:
                refused = {id(op) for op in over.ops}
                for op in over.ops:
                    _settle(op.future, QueueFull(sorted(op.devices() & over.devices)))
                batch = [op for op in batch if id(op) not in refused]

    async def _apply_in_one_transaction(self, batch: list[_Op]) -> None:
        devices = sorted(set().union(*(op.devices() for op in batch)))
        for op in batch:
            op.receipts = []
        async with self._db.transaction("write_batch") as conn:
            await conn.execute(
                _LOCK_DEVICES, [user for user, _ in devices], [device for _, device in devices]
            )
            # Runs of consecutive stores, and of consecutive acks, in submission order.
            start = 0
            while start < len(batch):
                is_store = batch[start].ack is None
                end = start
                while end < len(batch) and (batch[end].ack is None) == is_store:
                    end += 1
                await _apply_run(conn, batch[start:end], is_store=is_store, sealer=self._sealer)
                start = end
        # Committed (synchronous_commit on): durable from here.
        self.batches_committed += 1
        self.envelopes_committed += sum(len(op.inserts) for op in batch)
        self.acks_committed += sum(0 if op.ack is None else len(op.ack[2]) for op in batch)


class _OverCap(StorageError):
    """Raised inside the batch's transaction (rolling it back): `ops` would pass a cap."""

    def __init__(self, ops: list[_Op], devices: set[_Device]) -> None:
        super().__init__("stores over a device's cap")
        self.ops = ops
        self.devices = devices


async def _apply_run(
    conn: Connection, run: list[_Op], *, is_store: bool, sealer: EnvelopeSealer
) -> None:
    if not is_store:
        await _apply_acks(conn, run, sealer)
        return
    payloads = [payload for op in run for payload in op.payloads]
    if payloads:
        await conn.executemany(_INSERT_PAYLOAD, payloads)
    rows = [(*row, op.max_per_device) for op in run for row in op.inserts]
    inserted = await conn.fetchmany(_INSERT, rows)
    if len(inserted) != len(rows):  # the common case: every row went in
        over = await _refused_by_cap(conn, rows, inserted)
        if over:
            refused = [op for op in run if any((r[1], r[2], r[0]) in over for r in op.inserts)]
            raise _OverCap(refused, {(key[0], key[1]) for key in over})
        if payloads:
            with contextlib.suppress(ForeignKeyViolation):
                async with conn.transaction():
                    ids = [payload[0] for payload in payloads]
                    await conn.execute(_DROP_UNUSED_PAYLOADS, ids)


async def _apply_acks(conn: Connection, run: list[_Op], sealer: EnvelopeSealer) -> None:
    """The deletes of a run of acks; the copies among them that asked for a receipt leave
    it, in this transaction, for every active device of their sender."""
    acks = [op for op in run if op.ack is not None]
    flagged = await conn.fetchmany(
        _ACK, [(*op.ack, op.receipt_tags) for op in acks if op.ack is not None]
    )
    if not flagged:
        return  # the common case: nobody asked for a receipt
    acked = await _opened(flagged, sealer, None)  # named as the rows name them
    senders = sorted({sealer.store_name(s.envelope.sender_user) for s in acked})
    devices: dict[str, list[int]] = {}
    for row in await conn.fetch(_ACTIVE_DEVICES, senders):
        devices.setdefault(str(row["user_id"]), []).append(int(row["device"]))
    made: list[tuple[_Op, Envelope, str]] = []
    for stored in acked:
        env = stored.envelope
        op = next(
            op
            for op in acks
            if op.ack is not None
            and (op.ack[0], op.ack[1]) == (env.recipient_user, env.recipient_device)
            and env.id in op.ack[2]
        )
        to_user = sealer.store_name(env.sender_user)
        receipt_id = os.urandom(16)
        for to_device in devices.get(to_user, []):
            receipt = receipt_envelope(
                env,
                receipt_id=receipt_id,
                to_user=to_user,
                to_device=to_device,
                acked_by=op.named,
                now_ms=op.now_ms,
            )
            made.append((op, receipt, env.sender_user))
    if not made:
        return
    # The receipts' devices are locked like a store's (see _LOCK_DEVICES): their seq values
    # must commit in order. Taken after this batch's own locks, so two batches may wait on
    # each other; PostgreSQL then aborts one, which is applied again alone (_commit).
    targets = sorted({(r.recipient_user, r.recipient_device) for _, r, _ in made})
    await conn.execute(_LOCK_DEVICES, [u for u, _ in targets], [d for _, d in targets])
    inserted = await conn.fetchmany(
        _INSERT, [(*_insert_row(r, sealer, r.recipient_user), None) for _, r, _ in made]
    )
    went_in = {(str(r[0]), int(str(r[1])), bytes(r[2])) for r in inserted}
    for op, receipt, sender in made:
        if (receipt.recipient_user, receipt.recipient_device, receipt.id) in went_in:
            op.receipts.append(_addressed(receipt, sender))


def _addressed(e: Envelope, user: str) -> Envelope:
    """A receipt named for the caller: its sender's user as the message named it."""
    return Envelope(
        e.id,
        user,
        e.recipient_device,
        e.sender_user,
        e.sender_device,
        e.ts,
        e.server_ts,
        e.type,
        e.body,
        e.nonce,
        e.expires_ms,
    )


class _Probe(Exception):
    """Undoes the probe's savepoint."""


async def _refused_by_cap(
    conn: Connection, rows: Sequence[tuple[object, ...]], inserted: list[Row]
) -> set[_RowKey]:
    """Of the rows the insert left out, those the cap refused. A row is also left out when it
    is stored already or its device is not active; the same insert without the cap tells them
    apart through the unique index itself (whatever plan a lookup would get), in a savepoint
    that is then rolled back. Only runs when a row was left out."""
    went_in = {(str(r[0]), int(str(r[1])), bytes(r[2])) for r in inserted}
    left_out = [row for row in rows if (row[1], row[2], row[0]) not in went_in]
    over: set[_RowKey] = set()
    try:
        async with conn.transaction():
            probed = await conn.fetchmany(_INSERT, [(*row[:-1], None) for row in left_out])
            over = {(str(r[0]), int(str(r[1])), bytes(r[2])) for r in probed}
            raise _Probe
    except _Probe:
        pass
    return over


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _consume(future: asyncio.Future[None]) -> None:
    """Retrieve the outcome nobody waits for any more (its caller was cancelled)."""
    with contextlib.suppress(BaseException):
        future.exception()


def _insert_row(e: Envelope, sealer: EnvelopeSealer, recipient_user: str) -> _InsertRow:
    """The row's values; `recipient_user` as the row names the recipient."""
    key_id, sealed = sealer.seal(e, recipient_user)
    if sealed is None:
        return (
            e.id,
            recipient_user,
            e.recipient_device,
            e.sender_user,
            e.sender_device,
            e.ts,
            e.server_ts,
            e.type,
            e.body,
            e.nonce,
            e.expires_ms,
            None,
            None,
            None if e.payload is None else e.payload.id,
            receipt_column(sealer, e, recipient_user),
        )
    return (
        e.id,
        recipient_user,
        e.recipient_device,
        None,
        None,
        None,
        e.server_ts,
        None,
        None,
        None,
        e.expires_ms,
        key_id,
        sealed,
        None if e.payload is None else e.payload.id,
        receipt_column(sealer, e, recipient_user),
    )


def _payload_rows(envelopes: Sequence[Envelope], sealer: EnvelopeSealer) -> list[_PayloadRow]:
    """One row per shared payload named by these envelopes, sealed like them."""
    rows: dict[bytes, _PayloadRow] = {}
    for e in envelopes:
        if e.payload is None or e.payload.id in rows:
            continue
        key_id, sealed = sealer.seal_payload(e.payload)
        if sealed is None:
            rows[e.payload.id] = (e.payload.id, e.payload.body, None, None, e.expires_ms)
        else:
            rows[e.payload.id] = (e.payload.id, None, key_id, sealed, e.expires_ms)
    return list(rows.values())


async def _opened(
    rows: list[Row], sealer: EnvelopeSealer, named: str | None
) -> list[StoredEnvelope]:
    """The rows as envelopes, sealed ones opened, the recipient called `named` (the real id
    where the rows hold its keyed hash; None: as each row names it); a row that does not
    open is left out. Fetched rows carry the shared payload they name; the rows an ack
    hands back do not (a receipt needs the sender and the id only)."""
    key_ids = {
        int(key_id)
        for row in rows
        for key_id in (row["key_id"], row.get("payload_key_id"))
        if key_id is not None
    }
    if key_ids:
        await sealer.load(key_ids)
    found = []
    for row in rows:
        stored = _stored(row, sealer, named)
        if stored is not None:
            found.append(stored)
    return found


def _stored(row: Row, sealer: EnvelopeSealer, named: str | None) -> StoredEnvelope | None:
    message_id = bytes(row["id"])
    recipient_user = str(row["recipient_user"])
    recipient_device = int(row["recipient_device"])
    if row["key_id"] is None:
        fields = OpenedFields(
            str(row["sender_user"]),
            int(row["sender_device"]),
            int(row["ts"]),
            int(row["type"]),
            bytes(row["nonce"]),
            bytes(row["body"]),
        )
    else:
        opened = sealer.open(
            recipient_user,
            recipient_device,
            message_id,
            int(row["key_id"]),
            bytes(row["sealed"]),
        )
        if opened is None:
            return None
        fields = opened
    payload = None
    if row.get("payload_id") is not None:  # a fetched row naming a shared payload
        payload = _payload(row, sealer)
        if payload is None:
            return None
    sender_user, sender_device, ts, type_, nonce, body = fields
    # Positional: keywords cost a third more for an 11-field record made per envelope read.
    return StoredEnvelope(
        int(row["seq"]),
        Envelope(
            message_id,
            recipient_user if named is None else named,
            recipient_device,
            sender_user,
            sender_device,
            ts,
            int(row["server_ts"]),
            type_,
            body,
            nonce,
            int(row["expires_ms"]),
            False,
            payload,
        ),
    )


def _payload(row: Row, sealer: EnvelopeSealer) -> SharedPayload | None:
    """The shared payload a fetched row names, opened if sealed; None when it does not open
    or is gone (the row is then skipped, never delivered with half its body)."""
    payload_id = bytes(row["payload_id"])
    if not row["payload_found"]:
        log.error("stored message %s names a shared payload that is gone", row["id"].hex())
        return None
    if row["payload_key_id"] is None:
        return SharedPayload(id=payload_id, body=bytes(row["payload_body"]))
    opened = sealer.open_payload(
        payload_id, int(row["payload_key_id"]), bytes(row["payload_sealed"])
    )
    return None if opened is None else SharedPayload(id=payload_id, body=opened)
