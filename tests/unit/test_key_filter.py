"""storage.embedded.key_filter: a key added is always reported; others rarely are."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.embedded.key_filter import MAX_CAPACITY, MIN_CAPACITY, KeyFilter, capacity_for

keys = st.tuples(
    st.text(min_size=1, max_size=60),
    st.integers(min_value=1, max_value=127),
    st.text(min_size=1, max_size=60),
    st.binary(min_size=1, max_size=64),
)


@given(st.lists(keys, max_size=300), st.integers(min_value=1, max_value=2_000))
def test_every_key_added_may_be_held(
    added: list[tuple[str, int, str, bytes]], capacity: int
) -> None:
    f = KeyFilter(capacity)
    for key in added:
        f.add(key)
    assert all(f.may_hold(key) for key in added)
    assert f.added == len(added)
    assert f.full == (len(added) > capacity)


def test_false_positives_at_capacity_stay_rare() -> None:
    """About 0.6 % expected at capacity (12 bits, 4 probes); 2 % would mean a broken hash."""
    capacity = 50_000
    f = KeyFilter(capacity)
    for i in range(capacity):
        f.add((f"user-{i}", 1, "recipient", os.urandom(24)))
    assert not f.full
    fresh = sum(f.may_hold((f"user-{i}", 1, "recipient", os.urandom(24))) for i in range(capacity))
    assert fresh / capacity < 0.02


def test_an_empty_filter_holds_nothing() -> None:
    f = KeyFilter(MIN_CAPACITY)
    assert not any(f.may_hold(("u", 1, "r", os.urandom(24))) for _ in range(1_000))


def test_capacity_is_twice_the_records_within_bounds() -> None:
    assert capacity_for(0) == MIN_CAPACITY
    assert capacity_for(MIN_CAPACITY) == 2 * MIN_CAPACITY
    assert capacity_for(MAX_CAPACITY // 2) == MAX_CAPACITY
    assert capacity_for(MAX_CAPACITY // 2 + 1) is None
    with pytest.raises(ValueError):
        KeyFilter(0)
