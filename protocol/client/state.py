"""The client's state as typed records, kept in the encrypted :class:`LocalStore`.

| record | holds |
| --- | --- |
| `account` | the user id and device number, once registered |
| `keys` | the device's keys (identity, signed and one-time pre-keys, private halves) |
| `book` | per peer device: identity key (trust on first use), registration id, message counters |
| `session/<user>/<device>` | one Double Ratchet session |
| `outbox` | messages not yet answered `ok`, with their id, nonce and ciphertexts once made |
| `seen` | the last N delivered message ids (duplicates are dropped by id) |
| `held` | decrypted messages waiting for an earlier one from the same device |
| `contacts` | per contact device: the identity key trusted, restored from a key backup |
| `backup` | the version of the key backup this device last saved or restored |

Small structured records are JSON (byte strings as base64); keys and sessions
are the crypto module's own bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from protocol.client.content import Kind
from protocol.client.errors import StoreError
from protocol.client.store import LocalStore

__all__ = [
    "Account",
    "ClientState",
    "HeldMessage",
    "OutboxEntry",
    "PeerDevice",
    "PreparedCopy",
]


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb(text: Any) -> bytes:
    if not isinstance(text, str):
        raise StoreError("a byte string in a record is not text")
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    device: int


@dataclass(slots=True)
class PeerDevice:
    """What this device knows about one device of another user (or of its own user)."""

    identity_key: bytes
    registration_id: int
    send_seq: int = 0  # the last `seq` encrypted for it
    recv_seq: int = 0  # the last `seq` from it handed to the application


@dataclass(frozen=True, slots=True)
class PreparedCopy:
    """One recipient device's ciphertext of an outbox entry; resent unchanged on retries."""

    device: int
    registration_id: int
    type: int
    body: bytes


@dataclass(slots=True)
class OutboxEntry:
    local_id: int
    to: str
    id: bytes
    nonce: bytes
    kind: Kind
    body: bytes
    sent_to: str | None = None
    prepared: dict[int, PreparedCopy] = field(default_factory=dict)
    receipt: bool = False  # ask the relay for delivery receipts of stored copies

    def to_json(self) -> dict[str, Any]:
        return {
            "local_id": self.local_id,
            "to": self.to,
            "id": _b(self.id),
            "nonce": _b(self.nonce),
            "kind": int(self.kind),
            "body": _b(self.body),
            "sent_to": self.sent_to,
            "receipt": self.receipt,
            "prepared": [
                [p.device, p.registration_id, p.type, _b(p.body)] for p in self.prepared.values()
            ],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> OutboxEntry:
        prepared = {
            int(d): PreparedCopy(int(d), int(r), int(t), _unb(b)) for d, r, t, b in raw["prepared"]
        }
        return cls(
            local_id=int(raw["local_id"]),
            to=str(raw["to"]),
            id=_unb(raw["id"]),
            nonce=_unb(raw["nonce"]),
            kind=Kind(int(raw["kind"])),
            body=_unb(raw["body"]),
            sent_to=raw["sent_to"],
            prepared=prepared,
            receipt=bool(raw.get("receipt", False)),  # absent in outboxes saved before it
        )


@dataclass(frozen=True, slots=True)
class HeldMessage:
    """A decrypted message that arrived ahead of an earlier one from the same device."""

    from_user: str
    from_device: int
    id: bytes
    seq: int
    ts: int
    server_ts: int
    kind: Kind
    body: bytes
    sent_to: str | None
    held_at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "from_user": self.from_user,
            "from_device": self.from_device,
            "id": _b(self.id),
            "seq": self.seq,
            "ts": self.ts,
            "server_ts": self.server_ts,
            "kind": int(self.kind),
            "body": _b(self.body),
            "sent_to": self.sent_to,
            "held_at_ms": self.held_at_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HeldMessage:
        return cls(
            from_user=str(raw["from_user"]),
            from_device=int(raw["from_device"]),
            id=_unb(raw["id"]),
            seq=int(raw["seq"]),
            ts=int(raw["ts"]),
            server_ts=int(raw["server_ts"]),
            kind=Kind(int(raw["kind"])),
            body=_unb(raw["body"]),
            sent_to=raw["sent_to"],
            held_at_ms=int(raw["held_at_ms"]),
        )


def seen_key(user: str, device: int, message_id: bytes) -> bytes:
    """Duplicates are recognised per sending device, so one sender cannot shadow another's ids."""
    h = hashlib.blake2b(digest_size=16, person=b"relay-seen")
    h.update(f"{user}/{device}/".encode())
    h.update(message_id)
    return h.digest()


class ClientState:
    """In-memory copies of the records, written through to the store on every change."""

    def __init__(self, store: LocalStore, *, seen_capacity: int) -> None:
        self.store = store
        self.seen_capacity = seen_capacity
        self.account: Account | None = None
        self.book: dict[str, dict[int, PeerDevice]] = {}
        self.outbox: list[OutboxEntry] = []
        self.next_local_id = 1
        self.seen: OrderedDict[bytes, None] = OrderedDict()
        self.held: list[HeldMessage] = []
        # Contacts restored from a key backup: devices with no session yet, whose identity
        # keys were trusted before (the book takes over once a session starts).
        self.contacts: dict[str, dict[int, bytes]] = {}
        self.backup_version = 0
        self._load()

    def _json(self, name: str) -> Any:
        data = self.store.read(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError(f"record {name!r} is not JSON") from exc

    def _put_json(self, name: str, value: Any) -> None:
        self.store.write(name, json.dumps(value, separators=(",", ":")).encode())

    def _load(self) -> None:
        try:
            raw = self._json("account")
            if raw is not None:
                self.account = Account(str(raw["user"]), int(raw["device"]))
            for user, devices in (self._json("book") or {}).items():
                self.book[user] = {
                    int(d): PeerDevice(_unb(ik), int(reg), int(s), int(r))
                    for d, (ik, reg, s, r) in devices.items()
                }
            outbox = self._json("outbox") or {"next": 1, "entries": []}
            self.next_local_id = int(outbox["next"])
            self.outbox = [OutboxEntry.from_json(e) for e in outbox["entries"]]
            for key in self._json("seen") or []:
                self.seen[_unb(key)] = None
            self.held = [HeldMessage.from_json(h) for h in self._json("held") or []]
            for user, devices in (self._json("contacts") or {}).items():
                self.contacts[user] = {int(d): _unb(ik) for d, ik in devices.items()}
            self.backup_version = int((self._json("backup") or {}).get("version", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"a record of the store is damaged: {exc!r}") from exc

    # --- account and keys ------------------------------------------------------

    def save_account(self, account: Account) -> None:
        self._put_json("account", {"user": account.user, "device": account.device})
        self.account = account

    def load_keys(self) -> bytes | None:
        return self.store.read("keys")

    def save_keys(self, data: bytes) -> None:
        self.store.write("keys", data)

    # --- key backup ---------------------------------------------------------------

    def trusted_identity(self, user: str, device: int) -> bytes | None:
        """The identity key this device trusts for a peer device: its session's, or the one
        a key backup restored."""
        known = self.book.get(user, {}).get(device)
        if known is not None:
            return known.identity_key
        return self.contacts.get(user, {}).get(device)

    def contact_keys(self, own_user: str) -> dict[str, dict[int, bytes]]:
        """Every other user this device knows, with the identity keys it trusts: what a key
        backup carries."""
        merged = {user: dict(devices) for user, devices in self.contacts.items()}
        for user, devices in self.book.items():
            for device, peer in devices.items():
                merged.setdefault(user, {})[device] = peer.identity_key
        merged.pop(own_user, None)
        return merged

    def save_contacts(self, contacts: dict[str, dict[int, bytes]]) -> None:
        self._put_json(
            "contacts",
            {u: {str(d): _b(k) for d, k in devices.items()} for u, devices in contacts.items()},
        )
        self.contacts = {u: dict(devices) for u, devices in contacts.items()}

    def save_backup_version(self, version: int) -> None:
        self._put_json("backup", {"version": version})
        self.backup_version = version

    # --- peers and sessions ----------------------------------------------------

    def save_book(self) -> None:
        self._put_json(
            "book",
            {
                user: {
                    str(d): [_b(p.identity_key), p.registration_id, p.send_seq, p.recv_seq]
                    for d, p in devices.items()
                }
                for user, devices in self.book.items()
            },
        )

    def load_session(self, user: str, device: int) -> bytes | None:
        return self.store.read(f"session/{user}/{device}")

    def save_session(self, user: str, device: int, data: bytes) -> None:
        self.store.write(f"session/{user}/{device}", data)

    def forget_device(self, user: str, device: int) -> None:
        """A device the relay no longer has (or a stale one): drop its session."""
        self.book.get(user, {}).pop(device, None)
        self.store.delete(f"session/{user}/{device}")
        self.save_book()

    # --- outbox ----------------------------------------------------------------

    def add_outbox(self, make: Any) -> OutboxEntry:
        """Append the entry that `make(local_id)` builds, and persist."""
        entry: OutboxEntry = make(self.next_local_id)
        self.next_local_id += 1
        self.outbox.append(entry)
        self.save_outbox()
        return entry

    def remove_outbox(self, entry: OutboxEntry) -> None:
        self.outbox = [e for e in self.outbox if e.local_id != entry.local_id]
        self.save_outbox()

    def save_outbox(self) -> None:
        self._put_json(
            "outbox",
            {"next": self.next_local_id, "entries": [e.to_json() for e in self.outbox]},
        )

    # --- seen ids and held messages --------------------------------------------

    def is_seen(self, key: bytes) -> bool:
        return key in self.seen

    def mark_seen(self, key: bytes) -> None:
        """Remember a delivered id; the oldest is forgotten beyond the capacity (bounded memory)."""
        self.seen[key] = None
        self.seen.move_to_end(key)
        while len(self.seen) > self.seen_capacity:
            self.seen.popitem(last=False)

    def save_seen(self) -> None:
        self._put_json("seen", [_b(k) for k in self.seen])

    def save_held(self) -> None:
        self._put_json("held", [h.to_json() for h in self.held])
