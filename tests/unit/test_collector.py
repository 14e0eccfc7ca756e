"""The collector settings of a serving relay (relay/collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from relay.collector import YOUNG_THRESHOLD, settle_after_start


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_young_collections_spaced() -> None:
    settle_after_start()
    assert gc.get_freeze_count() > 1000  # this process's modules, classes and functions
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


@pytest.mark.usefixtures("restored_collector")
def test_cycles_made_while_serving_are_still_collected_without_being_asked() -> None:
    settle_after_start()
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    assert gone() is not None  # a cycle: reference counts alone do not free it
    kept = [[] for _ in range(3 * YOUNG_THRESHOLD)]  # allocations that trigger collections
    assert gone() is None
    assert len(kept) == 3 * YOUNG_THRESHOLD
