"""Safety numbers: libsignal's published vector, symmetry, and sensitivity to every input."""

from __future__ import annotations

import secrets

import pytest

from protocol.crypto.fingerprint import (
    SafetyNumberError,
    format_safety_number,
    party_digits,
    safety_number,
)

# libsignal rust/protocol/src/fingerprint.rs, `fingerprint_test_v1` (serialized keys, 5200 rounds).
ALICE_KEY = bytes.fromhex("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
BOB_KEY = bytes.fromhex("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
ALICE_ID = b"+14152222222"
BOB_ID = b"+14153333333"
DISPLAYABLE = "300354477692869396892869876765458257569162576843440918079131"


def test_libsignal_vector() -> None:
    assert safety_number(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID) == DISPLAYABLE


def test_both_sides_compute_the_same_number() -> None:
    a, b = secrets.token_bytes(32), secrets.token_bytes(32)
    ours = safety_number(a, b"alice", b, b"bob", iterations=64)
    theirs = safety_number(b, b"bob", a, b"alice", iterations=64)
    assert ours == theirs
    assert len(ours) == 60 and ours.isdigit()


def test_the_number_changes_when_a_key_or_an_id_changes() -> None:
    a, b, mallory = (secrets.token_bytes(32) for _ in range(3))
    honest = safety_number(a, b"alice", b, b"bob", iterations=64)
    assert safety_number(a, b"alice", mallory, b"bob", iterations=64) != honest
    assert safety_number(mallory, b"alice", b, b"bob", iterations=64) != honest
    assert safety_number(a, b"alice", b, b"bobby", iterations=64) != honest


def test_each_half_is_one_partys_digits() -> None:
    number = safety_number(ALICE_KEY, ALICE_ID, BOB_KEY, BOB_ID)
    halves = {number[:30], number[30:]}
    assert halves == {party_digits(ALICE_KEY, ALICE_ID), party_digits(BOB_KEY, BOB_ID)}


def test_groups_of_five() -> None:
    assert format_safety_number(DISPLAYABLE).split() == [
        DISPLAYABLE[i : i + 5] for i in range(0, 60, 5)
    ]


@pytest.mark.parametrize(
    ("key", "stable_id", "iterations"),
    [(b"", b"id", 64), (b"k" * 4097, b"id", 64), (b"k", b"i" * 4097, 64), (b"k", b"id", 1)],
)
def test_inputs_are_bounded(key: bytes, stable_id: bytes, iterations: int) -> None:
    with pytest.raises(SafetyNumberError):
        party_digits(key, stable_id, iterations)
