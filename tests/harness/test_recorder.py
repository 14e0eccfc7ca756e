"""The generator's latency recording: one counts index for several histograms."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.recorder import HIGHEST_US, new_histogram, record, record_in

LATENCIES_S = st.lists(
    st.floats(min_value=-1.0, max_value=HIGHEST_US / 1e6 * 2, allow_nan=False), max_size=200
)


@settings(max_examples=200, deadline=None)
@given(LATENCIES_S)
def test_record_in_is_record_in_each_histogram(latencies: list[float]) -> None:
    alone = [new_histogram() for _ in range(3)]
    together = [new_histogram() for _ in range(3)]
    for seconds in latencies:
        for h in alone:
            record(h, seconds)
        record_in(tuple(together), seconds)
    for a, b in zip(alone, together, strict=True):
        assert b.get_total_count() == a.get_total_count() == len(latencies)
        assert b.get_min_value() == a.get_min_value()
        assert b.get_max_value() == a.get_max_value()
        assert b.encode() == a.encode()
        assert [b.get_value_at_percentile(p) for p in (50, 99, 100)] == [
            a.get_value_at_percentile(p) for p in (50, 99, 100)
        ]
