"""RateLimiter contract (token buckets, spec §6 and §8), and the in-process limiter's memory."""

from __future__ import annotations

import pytest

from storage.interfaces import Store
from storage.ratelimit import TokenBucketLimiter
from storage.records import RateDecision

from .support import Backend, FakeClock

ALLOWED = RateDecision(allowed=True, retry_after_ms=0)


async def test_burst_then_refused_with_the_time_to_wait(store: Store) -> None:
    decisions = [await store.rate_limiter.hit("k", rate_per_s=2.0, burst=5) for _ in range(6)]
    assert decisions[:5] == [ALLOWED] * 5
    assert decisions[5] == RateDecision(allowed=False, retry_after_ms=500)


async def test_tokens_refill_over_time(backend: Backend, store: Store) -> None:
    limiter = store.rate_limiter
    for _ in range(3):
        assert (await limiter.hit("k", rate_per_s=4.0, burst=3)).allowed
    assert await limiter.hit("k", rate_per_s=4.0, burst=3) == RateDecision(False, 250)
    backend.clock.advance(0.125)  # half a token back
    assert await limiter.hit("k", rate_per_s=4.0, burst=3) == RateDecision(False, 125)
    backend.clock.advance(0.125)  # one token back
    assert await limiter.hit("k", rate_per_s=4.0, burst=3) == ALLOWED
    assert not (await limiter.hit("k", rate_per_s=4.0, burst=3)).allowed


async def test_a_bucket_holds_at_most_burst(backend: Backend, store: Store) -> None:
    limiter = store.rate_limiter
    assert (await limiter.hit("k", rate_per_s=1.0, burst=2)).allowed
    backend.clock.advance(3600)
    decisions = [await limiter.hit("k", rate_per_s=1.0, burst=2) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].retry_after_ms == 1000


async def test_a_refused_hit_takes_no_token(backend: Backend, store: Store) -> None:
    limiter = store.rate_limiter
    assert (await limiter.hit("k", rate_per_s=1.0, burst=1)).allowed
    for _ in range(5):
        assert not (await limiter.hit("k", rate_per_s=1.0, burst=1)).allowed
    backend.clock.advance(1.0)
    assert (await limiter.hit("k", rate_per_s=1.0, burst=1)).allowed


async def test_keys_have_their_own_buckets(store: Store) -> None:
    limiter = store.rate_limiter
    assert (await limiter.hit("a", rate_per_s=1.0, burst=1)).allowed
    assert not (await limiter.hit("a", rate_per_s=1.0, burst=1)).allowed
    assert (await limiter.hit("b", rate_per_s=1.0, burst=1)).allowed


async def test_slow_rates_give_long_waits(store: Store) -> None:
    limiter = store.rate_limiter
    per_ten_minutes = 10 / 600
    for _ in range(10):
        assert (await limiter.hit("fetch", rate_per_s=per_ten_minutes, burst=10)).allowed
    refused = await limiter.hit("fetch", rate_per_s=per_ten_minutes, burst=10)
    assert refused == RateDecision(allowed=False, retry_after_ms=60_000)


# The in-process limiter itself: bounded memory and argument checks.


async def test_full_buckets_are_dropped_now_and_then() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(clock=clock.monotonic, sweep_interval_s=60.0)
    for n in range(1000):
        assert (await limiter.hit(f"device-{n}", rate_per_s=1.0, burst=10)).allowed
    for _ in range(10):
        await limiter.hit("busy", rate_per_s=0.001, burst=10)
    assert len(limiter) == 1001
    clock.advance(61.0)  # the 1000 buckets are full again, "busy" is not
    assert (await limiter.hit("new", rate_per_s=1.0, burst=10)).allowed
    assert len(limiter) == 2
    assert not (await limiter.hit("busy", rate_per_s=0.001, burst=10)).allowed  # remembered


async def test_a_dropped_bucket_behaves_as_a_full_one() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(clock=clock.monotonic, sweep_interval_s=1.0)
    for _ in range(3):
        assert (await limiter.hit("k", rate_per_s=1.0, burst=3)).allowed
    clock.advance(10.0)
    assert (await limiter.hit("other", rate_per_s=1.0, burst=3)).allowed  # sweeps "k"
    decisions = [await limiter.hit("k", rate_per_s=1.0, burst=3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0)])
async def test_limits_must_make_sense(rate: float, burst: int) -> None:
    limiter = TokenBucketLimiter(clock=FakeClock().monotonic)
    with pytest.raises(ValueError):
        await limiter.hit("k", rate_per_s=rate, burst=burst)
