"""The rules of a key upload and of a claim, written once for every backend.

A backend reads what it stores for the device (`StoredKeys`: the stored keys of
the ids an upload names, and how many one-time keys of each kind it holds),
asks `plan_upload` what to write, and writes it; the rules never touch a
database. The rules:

- An id named twice in one list with the same key counts once; with another key
  it is a conflict (`KeyIdConflict`). Keys are compared, signatures are not: the
  first signature is kept.
- An id already stored with the same key is a no-op (an upload retried after a
  lost answer changes nothing); with another key it is a conflict.
- After the upload a device holds at most `max_stored` one-time keys of each
  kind (`TooManyPreKeys`); keys already stored count, no-ops do not.
- A signed pre-key or PQ last-resort key replaces the stored one (rotation).

A refused upload stores nothing: the backend raises before its first write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from storage.errors import KeyIdConflict, TooManyPreKeys
from storage.records import KeyUpload, OneTimeKey, SignedKey

K = TypeVar("K", OneTimeKey, SignedKey)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredKeys:
    """What a device stores, as far as one upload's rules need it."""

    prekeys: Mapping[int, bytes] = field(default_factory=dict)  # id → key, of the ids named
    pq_prekeys: Mapping[int, bytes] = field(default_factory=dict)
    prekey_count: int = 0  # every one-time EC key the device holds
    pq_prekey_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadPlan:
    """What to write: new one-time keys in upload order (the order claims hand them out),
    and the signed and last-resort keys that replace the stored ones."""

    prekeys: tuple[OneTimeKey, ...] = ()
    pq_prekeys: tuple[SignedKey, ...] = ()
    signed_prekey: SignedKey | None = None
    pq_last_resort: SignedKey | None = None


def named_ids(upload: KeyUpload) -> tuple[list[int], list[int]]:
    """The one-time EC and PQ key ids an upload names (what a backend looks up)."""
    return [k.id for k in upload.prekeys], [k.id for k in upload.pq_prekeys]


def _distinct(keys: Iterable[K]) -> dict[int, K]:
    """The keys by id, first occurrence kept; a repeated id with another key is a conflict."""
    out: dict[int, K] = {}
    for key in keys:
        seen = out.setdefault(key.id, key)
        if seen.key != key.key:
            raise KeyIdConflict(f"key id {key.id} is named twice with different keys")
    return out


def _new(keys: Iterable[K], stored: Mapping[int, bytes]) -> tuple[K, ...]:
    """The keys not stored yet; a stored id with another key is a conflict."""
    new: list[K] = []
    for key in _distinct(keys).values():
        held = stored.get(key.id)
        if held is None:
            new.append(key)
        elif held != key.key:
            raise KeyIdConflict(f"key id {key.id} is stored with another key")
    return tuple(new)


def plan_upload(upload: KeyUpload, stored: StoredKeys, *, max_stored: int) -> UploadPlan:
    """What to write for `upload`; raises KeyIdConflict or TooManyPreKeys (write nothing)."""
    prekeys = _new(upload.prekeys, stored.prekeys)
    pq_prekeys = _new(upload.pq_prekeys, stored.pq_prekeys)
    for kind, held, new in (
        ("one-time pre-keys", stored.prekey_count, prekeys),
        ("one-time PQ pre-keys", stored.pq_prekey_count, pq_prekeys),
    ):
        if held + len(new) > max_stored:
            raise TooManyPreKeys(f"more than {max_stored} {kind} ({held} stored, {len(new)} new)")
    return UploadPlan(
        prekeys=prekeys,
        pq_prekeys=pq_prekeys,
        signed_prekey=upload.signed_prekey,
        pq_last_resort=upload.pq_last_resort,
    )


def fell_below_low_water(low_water: int, before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Whether a claim took a count (EC, PQ) from the low-water mark to below it.

    Exactly one claim sees that, so the owner is told once per fall (0: never told).
    """
    return low_water > 0 and any(
        old == low_water and new < low_water for old, new in zip(before, after, strict=True)
    )
