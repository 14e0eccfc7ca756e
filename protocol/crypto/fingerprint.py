"""Safety numbers: 60 digits two people compare to be sure no one sits between them.

The scheme is Signal's numeric fingerprint (libsignal `NumericFingerprintGenerator`,
version 0): for each party, SHA-512 over ``version || key || stable_id || key``,
then ``iterations - 1`` more rounds of SHA-512 over ``hash || key``; the first 30
bytes become six 5-digit chunks (each 5 bytes big-endian, mod 100000). The two
30-digit halves are sorted and joined, so both sides compute the same number.
Pure functions: no store, no network.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ITERATIONS",
    "MAX_IDENTITY_BYTES",
    "SafetyNumberError",
    "format_safety_number",
    "party_digits",
    "safety_number",
]

ITERATIONS = 5200  # libsignal's count: "> 112 bits" of work for a matching number
_VERSION = b"\x00\x00"
_CHUNKS = 6
_CHUNK_BYTES = 5
MAX_IDENTITY_BYTES = 4096  # bounds the hashing work a caller can ask for
MAX_ITERATIONS = 1_000_000


class SafetyNumberError(ValueError):
    """An input the safety number cannot be computed from."""


def party_digits(identity_key: bytes, stable_id: bytes, iterations: int = ITERATIONS) -> str:
    """The 30 digits of one party: its identity key bound to its stable id (here, a user id)."""
    if not 1 < iterations <= MAX_ITERATIONS:
        raise SafetyNumberError(f"iterations must be in 2..{MAX_ITERATIONS}")
    if not identity_key or len(identity_key) > MAX_IDENTITY_BYTES:
        raise SafetyNumberError(f"an identity key has 1..{MAX_IDENTITY_BYTES} bytes")
    if len(stable_id) > MAX_IDENTITY_BYTES:
        raise SafetyNumberError(f"a stable id has at most {MAX_IDENTITY_BYTES} bytes")
    digest = hashlib.sha512(_VERSION + identity_key + stable_id + identity_key).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest + identity_key).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + _CHUNK_BYTES], 'big') % 100_000:05d}"
        for i in range(0, _CHUNKS * _CHUNK_BYTES, _CHUNK_BYTES)
    )


def safety_number(
    local_key: bytes,
    local_id: bytes,
    remote_key: bytes,
    remote_id: bytes,
    *,
    iterations: int = ITERATIONS,
) -> str:
    """60 digits, the same on both sides (the halves are sorted, not ordered local-first)."""
    local = party_digits(local_key, local_id, iterations)
    remote = party_digits(remote_key, remote_id, iterations)
    return local + remote if local < remote else remote + local


def format_safety_number(number: str) -> str:
    """Groups of five digits, as messengers show them: ``12345 67890 ...``."""
    return " ".join(number[i : i + 5] for i in range(0, len(number), 5))
