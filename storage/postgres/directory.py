"""Users and their devices in PostgreSQL (the DeviceDirectory interface).

`changed(user)`, when given, runs at each change to a user's devices: inside the
transaction of add_device and remove_device, after the user's row lock is taken and before
the commit (if it fails, the change is rolled back), and after the update of `touch`. The
node's cache of device lists (storage.directory_cache) bumps the user's version there, and
reads through `list_devices_settled`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from storage.audit_events import ADD_DEVICE, IDENTITY_KEY_RETIRED, REGISTER, REMOVE_DEVICE
from storage.errors import (
    DeviceLimitReached,
    DeviceNumbersExhausted,
    IdentityKeyInUse,
    IdentityKeyRetired,
    UnknownUser,
)
from storage.postgres.audit import record_event
from storage.postgres.database import Connection, Database, Row, UniqueViolation
from storage.postgres.device_lists import DeviceLists
from storage.postgres.device_reads import DEVICE_KEYS, DeviceReads
from storage.postgres.last_seen import LastSeenWrites
from storage.records import MAX_DEVICE_NUMBER, DeviceRecord, NewDevice

_DEVICE_COLUMNS = (
    "user_id, device, identity_key, key_scheme, registration_id, created_ms, last_seen_ms"
)
_IDENTITY_CONSTRAINT = "devices_identity_x25519_key"
_GET_DEVICES = (
    f"SELECT q.n, {_DEVICE_COLUMNS} FROM {DEVICE_KEYS}"
    " JOIN devices dv ON dv.user_id = q.u AND dv.device = q.d AND dv.removed_ms IS NULL"
)


class PostgresDeviceDirectory:
    def __init__(
        self,
        db: Database,
        *,
        now_ms: Callable[[], int],
        changed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self._now_ms = now_ms  # dates removals and audit events, which are kept for the record
        self._changed = changed
        self._last_seen = LastSeenWrites(db)
        self._get_device = DeviceReads(db, _GET_DEVICES, "get_device")
        self._settled_lists = DeviceLists(db, _DEVICE_COLUMNS)

    @property
    def last_seen(self) -> LastSeenWrites:
        """The batched `touch` updates (their statement counts)."""
        return self._last_seen

    @property
    def device_reads(self) -> DeviceReads:
        """The batched `get_device` reads (their statement counts)."""
        return self._get_device

    @property
    def settled_lists(self) -> DeviceLists:
        """The batched `list_devices_settled` reads (their batch counts)."""
        return self._settled_lists

    async def close(self) -> None:
        """Write the queued `touch` updates and answer the queued reads, then stop."""
        await self._last_seen.close()
        await self._get_device.close()
        await self._settled_lists.close()

    async def create_user(self, user: str, device: NewDevice) -> DeviceRecord:
        async with self._db.transaction("create_user") as conn:
            await _check_identity_free(conn, device.identity_x25519)
            # A user id that exists already is a driver error (Unavailable), as in the
            # embedded store: ids are fresh random UUIDs.
            await conn.execute(
                "INSERT INTO users (user_id, created_ms) VALUES ($1, $2)", user, device.created_ms
            )
            record = await _insert_device(conn, user, 1, device)
            await record_event(conn, user, 1, REGISTER, {}, at_ms=self._now_ms())
            return record

    async def add_device(self, user: str, device: NewDevice, *, max_devices: int) -> DeviceRecord:
        async with self._db.transaction("add_device") as conn:
            # Concurrency: the user's row lock serialises every add_device of this user until
            # commit, so the count and MAX below cannot be computed by two adds at once (the
            # primary key (user_id, device) would refuse a duplicate number anyway). NO KEY
            # UPDATE: it does not block the foreign-key checks of other inserts.
            locked = await conn.fetchval(
                "SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE", user
            )
            if locked is None:
                raise UnknownUser(user)
            # Removed devices keep their rows: MAX(device) is the highest number ever used.
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE removed_ms IS NULL) AS active,"
                " COALESCE(max(device), 0) AS highest FROM devices WHERE user_id = $1",
                user,
            )
            assert row is not None
            active, highest = int(row["active"]), int(row["highest"])
            if active >= max_devices:
                raise DeviceLimitReached(f"{user} has {active} active devices")
            if highest >= MAX_DEVICE_NUMBER:
                raise DeviceNumbersExhausted(user)
            await _check_identity_free(conn, device.identity_x25519)
            record = await _insert_device(conn, user, highest + 1, device)
            await record_event(conn, user, highest + 1, ADD_DEVICE, {}, at_ms=self._now_ms())
            if self._changed is not None:
                await self._changed(user)  # under the user's row lock, before the commit
            return record

    async def get_device(self, user: str, device: int) -> DeviceRecord | None:
        # Batched with the other reads of this event-loop turn (device_reads.DeviceReads).
        row = await self._get_device.read(user, device)
        return None if row is None else _record(row)

    async def list_devices(self, user: str) -> list[DeviceRecord] | None:
        async with self._db.connection("list_devices") as conn:
            return await _list_devices(conn, user)

    async def list_devices_settled(self, user: str) -> list[DeviceRecord] | None:
        """`list_devices` once every change to the user's devices in progress now has
        committed or rolled back: whatever finished its `changed` call before this one began
        is in the answer. Batched with the other such reads of this event-loop turn
        (device_lists.DeviceLists)."""
        rows = await self._settled_lists.read(user)
        return None if rows is None else [_record(row) for row in rows]

    async def remove_device(self, user: str, device: int) -> bool:
        now_ms = self._now_ms()
        async with self._db.transaction("remove_device") as conn:
            # The user's row first, as add_device takes it: changes of one user take turns,
            # and list_devices_settled waits for them.
            await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR NO KEY UPDATE", user)
            # Concurrency: FOR UPDATE conflicts with the FOR KEY SHARE lock that every stored
            # message and the FOR NO KEY UPDATE lock that every key upload takes on this row.
            # A store or upload that got its lock first commits before we go on, and the
            # DELETEs below (new statements, new snapshots) see and delete what it wrote; one
            # that comes after us re-checks `removed_ms IS NULL` once we commit, finds the
            # device removed, and writes nothing.
            locked = await conn.fetchval(
                "SELECT 1 FROM devices"
                " WHERE user_id = $1 AND device = $2 AND removed_ms IS NULL FOR UPDATE",
                user,
                device,
            )
            if locked is None:
                return False
            # The row stays, with its identity key: retired for good (UNIQUE over all rows).
            await conn.execute(
                "UPDATE devices SET removed_ms = $3 WHERE user_id = $1 AND device = $2",
                user,
                device,
                now_ms,
            )
            # Key rows before their counts: the same lock order as claims (key row, then
            # count row), so removal and claims cannot deadlock.
            for table in (
                "one_time_prekeys",
                "one_time_pq_prekeys",
                "signed_prekeys",
                "pq_last_resort_keys",
                "prekey_counts",
            ):
                await conn.execute(
                    f"DELETE FROM {table} WHERE user_id = $1 AND device = $2", user, device
                )
            await conn.execute(
                "DELETE FROM messages WHERE recipient_user = $1 AND recipient_device = $2",
                user,
                device,
            )
            await record_event(conn, user, device, REMOVE_DEVICE, {}, at_ms=now_ms)
            await record_event(conn, user, device, IDENTITY_KEY_RETIRED, {}, at_ms=now_ms)
            if self._changed is not None:
                await self._changed(user)  # under the user's row lock, before the commit
            return True

    async def touch(self, user: str, device: int, now_ms: int) -> None:
        # Batched with the other touches of this event-loop turn (last_seen.LastSeenWrites).
        await self._last_seen.touch(user, device, now_ms)
        if self._changed is not None:
            await self._changed(user)  # after the commit: last_seen is in what reads see


async def _list_devices(conn: Connection, user: str) -> list[DeviceRecord] | None:
    # One statement, one snapshot: the user row and its devices together.
    rows = await conn.fetch(
        "SELECT u.user_id AS known, d.user_id, d.device, d.identity_key, d.key_scheme,"
        " d.registration_id, d.created_ms, d.last_seen_ms"
        " FROM users u LEFT JOIN devices d"
        " ON d.user_id = u.user_id AND d.removed_ms IS NULL"
        " WHERE u.user_id = $1 ORDER BY d.device",
        user,
    )
    if not rows:
        return None
    return [_record(row) for row in rows if row["device"] is not None]


async def _check_identity_free(conn: Connection, identity_x25519: bytes) -> None:
    """Retired first: a removed device's key may never come back, whoever asks."""
    retired = await conn.fetchval(
        "SELECT removed_ms IS NOT NULL FROM devices WHERE identity_x25519 = $1", identity_x25519
    )
    if retired is True:
        raise IdentityKeyRetired("the identity key belonged to a removed device")
    if retired is False:
        raise IdentityKeyInUse("the identity key belongs to an active device")


async def _insert_device(
    conn: Connection, user: str, number: int, device: NewDevice
) -> DeviceRecord:
    # Concurrency: the check above is only the fast path. Two registrations of one key
    # racing past it both insert; the UNIQUE constraint on identity_x25519 makes the second
    # wait for the first and fail once it commits. The savepoint lets us look at the winner
    # (in use, or already removed again) in a new snapshot and name the right error.
    try:
        async with conn.transaction():  # a savepoint
            await conn.execute(
                "INSERT INTO devices (user_id, device, identity_key, key_scheme, identity_x25519,"
                " registration_id, created_ms, last_seen_ms)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                user,
                number,
                device.identity_key,
                device.key_scheme,
                device.identity_x25519,
                device.registration_id,
                device.created_ms,
            )
    except UniqueViolation as exc:
        if getattr(exc, "constraint_name", None) != _IDENTITY_CONSTRAINT:
            raise
        await _check_identity_free(conn, device.identity_x25519)
        raise IdentityKeyInUse("the identity key belongs to an active device") from None
    await conn.execute(
        "INSERT INTO prekey_counts (user_id, device, prekeys, pq_prekeys) VALUES ($1, $2, 0, 0)",
        user,
        number,
    )
    return DeviceRecord(
        user=user,
        device=number,
        identity_key=device.identity_key,
        key_scheme=device.key_scheme,
        registration_id=device.registration_id,
        created_ms=device.created_ms,
        last_seen_ms=device.created_ms,
    )


def _record(row: Row) -> DeviceRecord:
    return DeviceRecord(
        user=str(row["user_id"]),
        device=int(row["device"]),
        identity_key=bytes(row["identity_key"]),
        key_scheme=str(row["key_scheme"]),
        registration_id=int(row["registration_id"]),
        created_ms=int(row["created_ms"]),
        last_seen_ms=int(row["last_seen_ms"]),
    )
