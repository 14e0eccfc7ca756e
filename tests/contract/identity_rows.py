"""Version 1 rows with identity keys in non-canonical form, and what migration 0002 makes
of them: the scenario both stores' migration tests insert and check."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from protocol.signatures import IdentityKeyPair, KeyScheme, canonical_x25519

from .support import START_MS

P = 2**255 - 19


def with_bit_255(u: bytes) -> bytes:
    out = bytearray(u)
    out[31] |= 0x80
    return bytes(out)


def random_canonical_u() -> bytes:
    return canonical_x25519(os.urandom(32))


@dataclass(frozen=True, slots=True)
class V1Row:
    """One device row as version 1 stored it (identity_x25519 = the key's u as sent)."""

    name: str
    user: str
    identity_key: bytes
    key_scheme: str
    identity_x25519: bytes
    created_ms: int
    removed: bool
    holds_key: bool  # after 0002: holds the canonical form
    active_after: bool  # after 0002: still active

    @property
    def canonical(self) -> bytes:
        return canonical_x25519(self.identity_x25519)


def _xeddsa(name: str, u: bytes, order: int, *, removed: bool = False, **after: bool) -> V1Row:
    return V1Row(
        name=name,
        user=str(uuid.uuid4()),
        identity_key=b"\x05" + u,
        key_scheme="xeddsa",
        identity_x25519=u,
        created_ms=START_MS + order,
        removed=removed,
        holds_key=after["holds_key"],
        active_after=after["active_after"],
    )


def scenario() -> list[V1Row]:
    """Each group of rows shares one key pair; comments name the rule each one tests."""
    shared = random_canonical_u()
    shared_newer_canonical = random_canonical_u()
    retired_first = random_canonical_u()
    ed25519 = IdentityKeyPair.generate(KeyScheme.ED25519)
    rows = [
        # Alone, bit 255 set: simply rewritten.
        _xeddsa(
            "alone-bit-255",
            with_bit_255(random_canonical_u()),
            1,
            holds_key=True,
            active_after=True,
        ),
        # Alone, u >= p: reduced.
        _xeddsa(
            "alone-above-p", (P + 5).to_bytes(32, "little"), 2, holds_key=True, active_after=True
        ),
        # Two active, the older canonical: the older keeps it, the newer is retired.
        _xeddsa("older-canonical", shared, 3, holds_key=True, active_after=True),
        _xeddsa("newer-bit-255", with_bit_255(shared), 4, holds_key=False, active_after=False),
        # Two active, the older non-canonical: it takes the canonical form from the newer.
        _xeddsa(
            "older-bit-255",
            with_bit_255(shared_newer_canonical),
            5,
            holds_key=True,
            active_after=True,
        ),
        _xeddsa("newer-canonical", shared_newer_canonical, 6, holds_key=False, active_after=False),
        # A removed device and a newer active one: the active one holds the key.
        _xeddsa(
            "removed-older", retired_first, 7, removed=True, holds_key=False, active_after=False
        ),
        _xeddsa("active-newer", with_bit_255(retired_first), 8, holds_key=True, active_after=True),
        # ed25519 and the same key pair as xeddsa with bit 255 set: the older ed25519 holds it.
        V1Row(
            name="ed25519-older",
            user=str(uuid.uuid4()),
            identity_key=ed25519.public_key,
            key_scheme="ed25519",
            identity_x25519=ed25519.x25519_public(),
            created_ms=START_MS + 9,
            removed=False,
            holds_key=True,
            active_after=True,
        ),
        _xeddsa(
            "xeddsa-of-ed25519",
            with_bit_255(ed25519.x25519_public()),
            10,
            holds_key=False,
            active_after=False,
        ),
    ]
    return rows


def expected_x25519(row: V1Row) -> bytes:
    """identity_x25519 after 0002: canonical for a holder, else 0xFF + the old form."""
    return row.canonical if row.holds_key else b"\xff" + row.identity_x25519
