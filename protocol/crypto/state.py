"""msgpack encoding of stored key material and session state, read back strictly.

Device keys and sessions are written to the client's (encrypted) local store
and read back after a restart; a record that does not have exactly the
expected shape is :class:`StateError`, never a half-built object.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from protocol.crypto.errors import StateError

__all__ = ["Record", "pack", "unpack"]

# Far above any real record (100 ML-KEM seeds and keys are about 160 KB).
_MAX_STATE_BYTES: Final = 16 * 1024 * 1024


def pack(record: dict[str, Any]) -> bytes:
    """A record as msgpack (byte strings as ``bin``)."""
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def unpack(data: bytes, *, kind: str, version: int) -> Record:
    """Read a record written by :func:`pack` whose ``v`` must equal ``version``."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_STATE_BYTES:
        raise StateError(f"{kind}: not a byte string of at most {_MAX_STATE_BYTES} bytes")
    try:
        value = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StateError(f"{kind}: not msgpack") from exc
    record = Record(value, kind)
    if record.integer("v") != version:
        raise StateError(f"{kind}: unknown version")
    return record


class Record:
    """Typed access to one unpacked map; every wrong shape is :class:`StateError`."""

    __slots__ = ("_kind", "_value")

    def __init__(self, value: object, kind: str) -> None:
        if not isinstance(value, dict):
            raise StateError(f"{kind}: not a map")
        self._value: dict[object, object] = value
        self._kind = kind

    def _get(self, key: str) -> object:
        if key not in self._value:
            raise StateError(f"{self._kind}: missing {key!r}")
        return self._value[key]

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not nil."""
        return self._value.get(key) is not None

    def blob(self, key: str, *, length: int | None = None, max_length: int = 4096) -> bytes:
        """A byte string, of exactly ``length`` bytes when given."""
        value = self._get(key)
        if not isinstance(value, bytes):
            raise StateError(f"{self._kind}: {key!r} is not bytes")
        if (length is not None and len(value) != length) or len(value) > max_length:
            raise StateError(f"{self._kind}: {key!r} has a bad length")
        return value

    def optional_blob(self, key: str, *, length: int | None = None) -> bytes | None:
        """A byte string, or ``None`` when absent or nil."""
        return self.blob(key, length=length) if self.has(key) else None

    def integer(self, key: str, *, low: int = 0, high: int = 2**32 - 1) -> int:
        """An integer within ``[low, high]``."""
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise StateError(f"{self._kind}: {key!r} is not an integer in range")
        return value

    def optional_int(self, key: str, *, low: int = 0, high: int = 2**32 - 1) -> int | None:
        """An integer, or ``None`` when absent or nil."""
        return self.integer(key, low=low, high=high) if self.has(key) else None

    def text(self, key: str) -> str:
        """A text string."""
        value = self._get(key)
        if not isinstance(value, str):
            raise StateError(f"{self._kind}: {key!r} is not a string")
        return value

    def record(self, key: str) -> Record:
        """A nested map."""
        return Record(self._get(key), self._kind)

    def optional_record(self, key: str) -> Record | None:
        """A nested map, or ``None`` when absent or nil."""
        return self.record(key) if self.has(key) else None

    def value_list(self, key: str, *, max_items: int, length: int = 32) -> list[bytes]:
        """A list of at most ``max_items`` byte strings of ``length`` bytes each."""
        value = self._get(key)
        if not isinstance(value, list) or len(value) > max_items:
            raise StateError(f"{self._kind}: {key!r} is not a list of at most {max_items}")
        if not all(isinstance(item, bytes) and len(item) == length for item in value):
            raise StateError(f"{self._kind}: {key!r} holds a bad entry")
        return list(value)

    def records(self, key: str, *, max_items: int) -> list[Record]:
        """A list of maps of at most ``max_items`` entries."""
        value = self._get(key)
        if not isinstance(value, list) or len(value) > max_items:
            raise StateError(f"{self._kind}: {key!r} is not a list of at most {max_items}")
        return [Record(item, self._kind) for item in value]
