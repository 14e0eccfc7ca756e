"""Reads a fuzz input as a sequence of choices, so targets need no atheris at import time."""

from __future__ import annotations


class Reader:
    """Takes bytes and small numbers off the front of an input; past its end, zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        value = self.data[self.at] if self.at < len(self.data) else 0
        self.at += 1
        return value

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def take(self, count: int) -> bytes:
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return chunk + bytes(count - len(chunk))

    def rest(self) -> bytes:
        chunk = self.data[self.at :]
        self.at = len(self.data)
        return chunk
