"""Stored envelopes in SQLite (the MessageQueue interface).

Durability: `store` returns once its job is committed (group commit, synchronous=FULL).
Ordering: `seq` is AUTOINCREMENT and jobs run in submission order on one writer thread, so
a device's messages are fetched in the order they were stored, and an ack submitted before
a fetch is applied before it: `fetch` and `queue_state` stay on the writer for that.
`pending_origins` (the `conflict` check of every stored send) reads on the reader
connection, at once: it sees every store and ack answered before it was asked, which is all
a caller can rely on (a send whose store is still unanswered has no `ok` yet).

Encryption at rest: the queue seals with its `EnvelopeSealer` (`use_sealer`; `ClearSealer`
until then, which keeps every row in the clear columns). A sealed row keeps only what the
queries need in the clear (recipient, id, seq, server time, expiry, key id); `fetch` and
`pending_origins` open it on the event loop after the read, and leave out a row that does
not open (the sealer logs and counts it), never delivering it half-read.

Shared payloads (`send.multi`, migration 0006): an envelope naming one stores its header in
its row and the payload once in shared_payloads (sealed apart), whatever the number of
devices; `fetch` joins it back. Triggers count the rows naming a payload and delete it with
the last; a store call whose rows all went elsewhere (stored already, device removed)
deletes the payload row it made, in the same job.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from storage.at_rest.sealing import CLEAR_KEY_ID, ClearSealer, EnvelopeSealer, receipt_column
from storage.embedded.database import SqliteDatabase
from storage.embedded.key_filter import TableKeys
from storage.embedded.reader import SqliteReader
from storage.errors import QueueFull
from storage.records import (
    Envelope,
    PendingOrigin,
    SharedPayload,
    StoredEnvelope,
    receipt_envelope,
)

log = logging.getLogger(__name__)

ACK_CHUNK: Final = 500  # ids per DELETE: well under SQLite's bound-parameter limit
PURGE_CHUNK: Final = 5000  # expired rows per job, so a big purge never stalls the writer

_COLUMNS = (
    "id, recipient_user, recipient_device, sender_user, sender_device,"
    " ts, server_ts, type, body, nonce, expires_ms, key_id, sealed, payload_id"
)

# Read back as written, a `sealed` value that is not a blob (a row changed behind the
# store's back) as one, so that it fails to open, and is skipped, rather than failing the read.
# Then the shared payload the row names, if any.
_SELECTED = (
    ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(","))
    .replace("m.sealed", "CAST(m.sealed AS BLOB)")
    .replace("m.payload_id", "m.payload_id, p.body, p.key_id, CAST(p.sealed AS BLOB)")
)
_FROM_JOINED = "messages m LEFT JOIN shared_payloads p ON p.payload_id = m.payload_id"
# What an ack's delete gives back: the row up to `sealed` (as fetched, without the shared
# payload: a receipt needs the sender and the id only), then the receipt tag.
_ACK_RETURNED = (
    "seq, id, recipient_user, recipient_device, sender_user, sender_device, ts, server_ts,"
    " type, body, nonce, expires_ms, key_id, CAST(sealed AS BLOB), receipt"
)

# A payload row before the rows naming it; one stored already (another store call of the
# same frame) is kept as is, its count going on.
_INSERT_PAYLOAD = """
INSERT INTO shared_payloads (payload_id, body, key_id, sealed, expires_ms)
VALUES (:payload_id, :body, :key_id, :sealed, :expires_ms)
ON CONFLICT (payload_id) DO NOTHING
"""
_DROP_UNUSED_PAYLOAD = "DELETE FROM shared_payloads WHERE payload_id = ? AND refs <= 0"

# The recipient must be an active device: removal deletes a device's messages, and a
# store racing a removal (they are serialised jobs) must not leave any behind. A
# (device, id) already stored is kept as is, so a retried store is a no-op; only that
# uniqueness conflict is ignored, any other violation is an error. With a cap, the device's
# count of stored rows (kept by triggers, migration 0003) must be below it: jobs run one at a
# time on the writer, so nothing else changes it between the read and the insert.
_INSERT_TEMPLATE = """
INSERT INTO messages ({columns}, receipt)
SELECT :id, :recipient_user, :recipient_device, :sender_user, :sender_device,
       :ts, :server_ts, :type, :body, :nonce, :expires_ms, :key_id, :sealed, :payload_id,
       :receipt
WHERE EXISTS (
    SELECT 1 FROM devices
    WHERE user = :recipient_user AND device = :recipient_device AND removed_ms IS NULL
){cap}
ON CONFLICT (recipient_user, recipient_device, id) DO NOTHING
"""
_INSERT = _INSERT_TEMPLATE.format(columns=_COLUMNS, cap="")
_INSERT_CAPPED = _INSERT_TEMPLATE.format(
    columns=_COLUMNS,
    cap="""
AND COALESCE((
    SELECT stored FROM queue_counts
    WHERE recipient_user = :recipient_user AND recipient_device = :recipient_device
), 0) < :cap""",
)
# Why a row was left out: stored already, or its device not active; else the cap.
_STORED = "SELECT 1 FROM messages WHERE recipient_user = ? AND recipient_device = ? AND id = ?"
_ACTIVE = "SELECT 1 FROM devices WHERE user = ? AND device = ? AND removed_ms IS NULL"


class SqliteMessageQueue:
    def __init__(
        self,
        db: SqliteDatabase,
        reader: SqliteReader,
        *,
        sealer: EnvelopeSealer | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._reader = reader
        self._sealer: EnvelopeSealer = ClearSealer() if sealer is None else sealer
        # The ids of the stored rows (messages and receipts), for `pending_origins`: each is
        # added before the insert that writes it is queued (key_filter).
        self._ids = TableKeys(
            db.path,
            db.committed,
            table="messages",
            key_columns="id",
            key_of=_id_of,
            monotonic=monotonic,
        )

    @property
    def sealer(self) -> EnvelopeSealer:
        return self._sealer

    def use_sealer(self, sealer: EnvelopeSealer) -> None:
        """Seal the rows stored from now on with `sealer`, and open sealed rows with it."""
        self._sealer = sealer

    async def store(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_per_device: int | None = None,
        stored_as: Callable[[str], str] | None = None,
    ) -> None:
        if not envelopes:
            return
        # Sealed here, on the loop, before the job is queued: the job is queued in call
        # order all the same (no await before `run`).
        sealer = self._sealer
        if stored_as is None:
            rows = [_row(e, sealer, e.recipient_user) for e in envelopes]
        else:
            rows = [_row(e, sealer, stored_as(e.recipient_user)) for e in envelopes]
        payloads = _payload_rows(envelopes, sealer)
        for e in envelopes:
            self._ids.add(e.id)

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_PAYLOAD, payloads)
            if max_per_device is None:
                conn.executemany(_INSERT, rows)
            else:
                left_out = [
                    row
                    for row in rows
                    if conn.execute(_INSERT_CAPPED, {**row, "cap": max_per_device}).rowcount == 0
                ]
                full = _over_cap(conn, left_out)
                if full:
                    raise QueueFull(full)  # the job's savepoint undoes the rows that went in
            conn.executemany(_DROP_UNUSED_PAYLOAD, [(p["payload_id"],) for p in payloads])

        await self._db.run(job)

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
        def job(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows = conn.execute(
                f"SELECT m.seq, {_SELECTED} FROM {_FROM_JOINED}"
                " WHERE m.recipient_user = ? AND m.recipient_device = ? AND m.seq > ?"
                " AND m.expires_ms > ? ORDER BY m.seq LIMIT ?",
                (user, device, after_seq, now_ms, limit),
            ).fetchall()
            return [tuple(row) for row in rows]

        rows = await self._db.run(job)
        sealer = self._sealer
        sealed_ids = {
            int(row[column])
            for row in rows
            for column in (_KEY_ID, _PAYLOAD_KEY_ID)
            if row[column] is not None and row[column] != CLEAR_KEY_ID
        }
        if sealed_ids:  # a data key made by another node since this one last looked
            await sealer.load(sealed_ids)
        name = user if named is None else named
        return [stored for row in rows if (stored := _stored(row, sealer, name)) is not None]

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
        at = int(time.time() * 1000) if now_ms is None else now_ms
        acked_by = named or user
        # The tags a copy that asked for a receipt carries, computed here on the loop: the
        # job then finds those copies by an equality, without opening any other row.
        tags = {
            message_id: sealer.receipt_tag(user, device, message_id, wanted=True)
            for message_id in unique
        }
        # Drawn here, so that the ids the receipts may take are in the filter before the
        # job is queued (one id per acked message, for all its sender's devices).
        drawn = os.urandom(16 * len(unique))
        receipt_ids = {m: drawn[16 * i : 16 * i + 16] for i, m in enumerate(unique)}
        for receipt_id in receipt_ids.values():
            self._ids.add(receipt_id)

        def job(conn: sqlite3.Connection) -> list[Envelope]:
            receipts: list[Envelope] = []
            for start in range(0, len(unique), ACK_CHUNK):
                chunk = unique[start : start + ACK_CHUNK]
                marks = ", ".join("?" * len(chunk))
                # One statement, as before receipts: the removed rows come back in process
                # (no copy over a network), and only those whose tag matches are opened.
                gone = conn.execute(
                    "DELETE FROM messages WHERE recipient_user = ? AND recipient_device = ?"
                    f" AND id IN ({marks}) RETURNING {_ACK_RETURNED}",
                    (user, device, *chunk),
                ).fetchall()
                for row in gone:
                    tag = row[_RECEIPT]
                    if tag is None or tag != tags.get(bytes(row[1])):
                        continue
                    opened = _stored(tuple(row[:_RECEIPT]), sealer, user)
                    if opened is not None:
                        receipt_id = receipt_ids[bytes(row[1])]
                        receipts.extend(
                            _leave_receipts(conn, sealer, opened.envelope, acked_by, at, receipt_id)
                        )
            return receipts

        return await self._db.run(job)

    async def queue_state(self, user: str, device: int, *, now_ms: int) -> tuple[int, int]:
        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            count, highest = conn.execute(
                "SELECT COUNT(*) FILTER (WHERE expires_ms > ?), COALESCE(MAX(seq), 0)"
                " FROM messages WHERE recipient_user = ? AND recipient_device = ?",
                (now_ms, user, device),
            ).fetchone()
            return int(count), int(highest)

        return await self._db.run(job)

    async def pending_origins(
        self, user: str, devices: Sequence[int], message_id: bytes
    ) -> list[PendingOrigin]:
        if not devices or not self._ids.may_hold(message_id):
            return []
        wanted = sorted(set(devices))

        def job(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            marks = ", ".join("?" * len(wanted))
            rows = conn.execute(
                "SELECT recipient_device, sender_user, sender_device, nonce, key_id,"
                " CAST(sealed AS BLOB)"
                " FROM messages WHERE recipient_user = ? AND id = ?"
                f" AND recipient_device IN ({marks}) ORDER BY recipient_device",
                (user, message_id, *wanted),
            ).fetchall()
            return [tuple(row) for row in rows]

        rows = self._reader.read(job)
        sealer = self._sealer
        sealed_ids = {int(row[4]) for row in rows if row[4] != CLEAR_KEY_ID}
        if sealed_ids:
            await sealer.load(sealed_ids)
        origins: list[PendingOrigin] = []
        for device, sender_user, sender_device, nonce, key_id, sealed in rows:
            if key_id == CLEAR_KEY_ID:
                origins.append(
                    PendingOrigin(
                        device=int(device),
                        sender_user=str(sender_user),
                        sender_device=int(sender_device),
                        nonce=bytes(nonce),
                    )
                )
                continue
            opened = sealer.open(user, int(device), message_id, int(key_id), bytes(sealed))
            if opened is not None:  # else logged and counted by the sealer; left out
                origins.append(
                    PendingOrigin(
                        device=int(device),
                        sender_user=opened.sender_user,
                        sender_device=opened.sender_device,
                        nonce=opened.nonce,
                    )
                )
        return origins

    async def purge_expired(self, now_ms: int) -> int:
        def job(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM messages WHERE seq IN"
                " (SELECT seq FROM messages WHERE expires_ms <= ? LIMIT ?)",
                (now_ms, PURGE_CHUNK),
            ).rowcount

        def payloads_job(conn: sqlite3.Connection) -> int:
            # Their messages expired with them (one expiry per frame); what the triggers
            # have not deleted yet goes here.
            return conn.execute(
                "DELETE FROM shared_payloads WHERE payload_id IN"
                " (SELECT payload_id FROM shared_payloads WHERE expires_ms <= ? LIMIT ?)",
                (now_ms, PURGE_CHUNK),
            ).rowcount

        # Chunks as separate jobs: other connections' jobs run in between.
        total = 0
        while True:
            deleted = await self._db.run(job)
            total += deleted
            if deleted < PURGE_CHUNK:
                break
        while await self._db.run(payloads_job) == PURGE_CHUNK:
            pass
        return total

    async def close(self) -> None:
        """Stop a filter being built."""
        await self._ids.close()

    async def build_filter(self) -> None:
        """Build the filter of the stored ids now (else at the first `pending_origins`)."""
        await self._ids.build()

    async def stored_count(self) -> int:
        def job(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
            return int(count)

        return await self._db.run(job)


def _over_cap(conn: sqlite3.Connection, left_out: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The devices of the rows the capped insert left out for the cap: active, and the row not
    stored already. Runs only when a row was left out."""
    full = set()
    for row in left_out:
        device = (row["recipient_user"], row["recipient_device"])
        if (
            conn.execute(_ACTIVE, device).fetchone() is not None
            and conn.execute(_STORED, (*device, row["id"])).fetchone() is None
        ):
            full.add(device)
    return sorted(full)


_KEY_ID: Final = 12  # the place of key_id in a fetched row (seq, then _COLUMNS)
_RECEIPT: Final = 14  # the receipt tag, in a row an ack's delete returns
_PAYLOAD_ID: Final = 14  # in a fetched row, the shared payload's id, then its columns
_PAYLOAD_KEY_ID: Final = 16  # the place of the shared payload's key_id (after payload_id, body)


def _leave_receipts(
    conn: sqlite3.Connection,
    sealer: EnvelopeSealer,
    acked: Envelope,
    acked_by: str,
    now_ms: int,
    receipt_id: bytes,
) -> list[Envelope]:
    """The receipt of `acked` for every active device of its sender, inserted in the ack's
    transaction; returned addressed to the sender's id as the message names it."""
    to_user = sealer.store_name(acked.sender_user)
    devices = conn.execute(
        "SELECT device FROM devices WHERE user = ? AND removed_ms IS NULL ORDER BY device",
        (to_user,),
    ).fetchall()
    made: list[Envelope] = []
    for (to_device,) in devices:
        receipt = receipt_envelope(
            acked,
            receipt_id=receipt_id,
            to_user=to_user,
            to_device=int(to_device),
            acked_by=acked_by,
            now_ms=now_ms,
        )
        if conn.execute(_INSERT, _row(receipt, sealer, to_user)).rowcount:
            made.append(_addressed(receipt, acked.sender_user))
    return made


def _addressed(e: Envelope, user: str) -> Envelope:
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


def _row(e: Envelope, sealer: EnvelopeSealer, recipient_user: str) -> dict[str, Any]:
    """The insert's parameters: the clear columns, or the sealed ones (clear columns NULL);
    the recipient as the row names it."""
    key_id, sealed = sealer.seal(e, recipient_user)
    clear = sealed is None
    return {
        "id": e.id,
        "recipient_user": recipient_user,
        "recipient_device": e.recipient_device,
        "sender_user": e.sender_user if clear else None,
        "sender_device": e.sender_device if clear else None,
        "ts": e.ts if clear else None,
        "server_ts": e.server_ts,
        "type": e.type if clear else None,
        "body": e.body if clear else None,
        "nonce": e.nonce if clear else None,
        "expires_ms": e.expires_ms,
        "key_id": CLEAR_KEY_ID if clear else key_id,
        "sealed": sealed,
        "payload_id": None if e.payload is None else e.payload.id,
        "receipt": receipt_column(sealer, e, recipient_user),
    }


def _payload_rows(envelopes: Sequence[Envelope], sealer: EnvelopeSealer) -> list[dict[str, Any]]:
    """One row per shared payload named by these envelopes, sealed like them."""
    rows: dict[bytes, dict[str, Any]] = {}
    for e in envelopes:
        if e.payload is None or e.payload.id in rows:
            continue
        key_id, sealed = sealer.seal_payload(e.payload)
        rows[e.payload.id] = {
            "payload_id": e.payload.id,
            "body": e.payload.body if sealed is None else None,
            "key_id": key_id,
            "sealed": sealed,
            "expires_ms": e.expires_ms,
        }
    return list(rows.values())


def _payload(row: tuple[Any, ...], sealer: EnvelopeSealer) -> SharedPayload | None:
    """The shared payload a fetched row names, opened if sealed; None when it does not open
    or is gone (the row is then skipped, never delivered with half its body)."""
    payload_id, body, key_id, sealed = row[14:18]
    if key_id is None:
        log.error("stored message %s names a shared payload that is gone", bytes(row[1]).hex())
        return None
    if key_id == CLEAR_KEY_ID:
        return SharedPayload(id=bytes(payload_id), body=bytes(body))
    opened = sealer.open_payload(bytes(payload_id), int(key_id), bytes(sealed))
    return None if opened is None else SharedPayload(id=bytes(payload_id), body=opened)


def _stored(row: tuple[Any, ...], sealer: EnvelopeSealer, named: str) -> StoredEnvelope | None:
    """The row as stored, opened if sealed, its recipient called `named` (the real id where
    the row holds its keyed hash), with the shared payload it names (fetched rows: from
    place 14 on); None when it, or its payload, does not open (the sealer said so). SQLite
    gives the columns their declared types (INTEGER, TEXT, BLOB), so no conversions."""
    seq, id_, r_user, r_device, s_user, s_device, ts, server_ts, type_, body, nonce, exp = row[:12]
    key_id = row[12]
    payload = None
    if len(row) > _PAYLOAD_ID and row[_PAYLOAD_ID] is not None:
        payload = _payload(row, sealer)
        if payload is None:
            return None
    if key_id != CLEAR_KEY_ID:
        opened = sealer.open(r_user, r_device, id_, key_id, row[13])
        if opened is None:
            return None
        s_user, s_device, ts, type_, nonce, body = opened
    # Positional: keywords cost a third more for an 11-field record made per envelope read.
    envelope = Envelope(
        id_,
        named,
        r_device,
        s_user,
        s_device,
        ts,
        server_ts,
        type_,
        body,
        nonce,
        exp,
        False,
        payload,
    )
    return StoredEnvelope(seq, envelope)


def _id_of(row: tuple[Any, ...]) -> bytes:
    return bytes(row[0])
