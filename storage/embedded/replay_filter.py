"""The keys of the embedded store's replay records, in memory: the claim of a nonce that no
record holds (nearly every send) is answered without reading SQLite.

A Bloom filter: `may_hold(key)` is False only for a key never added, so a claim that skips
the read on False cannot miss a record; a false positive (about 0.6 % of fresh keys at
capacity) costs the read the claim made before. Keys are only ever added: a purged
record's key stays until the filter is built again, which the replay guard does once more
keys were added than the filter was sized for.

Memory: 12 bits a key, sized at twice the records found when it is built and at least
MIN_CAPACITY keys (1.5 MB). A table of more than MAX_CAPACITY / 2 records (a 96 MB filter)
is read as before, with no filter.

The positions come from Python's own hash of the key tuple (its strings and bytes cache
theirs), which is salted per process: the filter lives and dies with the process, and is
never written anywhere.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_CAPACITY", "MIN_CAPACITY", "KeyFilter", "ReplayKey", "capacity_for"]

PROBES: Final = 4
BITS_PER_KEY: Final = 12
MIN_CAPACITY: Final = 1 << 20
MAX_CAPACITY: Final = 1 << 26
_MASK32: Final = (1 << 32) - 1
_MASK64: Final = (1 << 64) - 1

ReplayKey = tuple[str, int, str, bytes]
"""sender user, sender device, recipient user, nonce: the replay table's primary key."""


def capacity_for(records: int) -> int | None:
    """The capacity of a filter for a table of `records` rows, or None: too many to filter."""
    if records > MAX_CAPACITY // 2:
        return None
    return max(MIN_CAPACITY, 2 * records)


class KeyFilter:
    """A Bloom filter of replay keys (PROBES positions by double hashing)."""

    __slots__ = ("_bits", "_size", "added", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a filter holds at least one key")
        self.capacity = capacity
        self.added = 0
        self._size = capacity * BITS_PER_KEY
        self._bits = bytearray((self._size + 7) // 8)

    @property
    def full(self) -> bool:
        """More keys were added than it was sized for: its false positives grow from here."""
        return self.added > self.capacity

    def add(self, key: ReplayKey) -> None:
        bits, size = self._bits, self._size
        hashed = hash(key) & _MASK64
        at, step = hashed & _MASK32, (hashed >> 32) | 1
        for _ in range(PROBES):
            position = at % size
            bits[position >> 3] |= 1 << (position & 7)
            at += step
        self.added += 1

    def may_hold(self, key: ReplayKey) -> bool:
        """False only if `key` was never added."""
        bits, size = self._bits, self._size
        hashed = hash(key) & _MASK64
        at, step = hashed & _MASK32, (hashed >> 32) | 1
        for _ in range(PROBES):
            position = at % size
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
            at += step
        return True
