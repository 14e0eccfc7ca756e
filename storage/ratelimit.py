"""An in-process token-bucket rate limiter, usable by any backend of a single node.

Each key has a bucket holding up to `burst` tokens, refilled continuously at `rate_per_s`;
a hit takes one token or is refused with the time until one is back. `hit` never awaits,
so on one event loop a bucket's read-modify-write cannot interleave with another hit.

Memory stays bounded by the keys that are active: a bucket that has refilled to `burst`
is indistinguishable from a missing one, so such buckets are dropped now and then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from storage.records import RateDecision

SWEEP_INTERVAL_S: Final = 60.0
_EPSILON: Final = 1e-9  # float drift must not refuse a token that is due exactly now


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float  # clock reading when `tokens` was right
    rate_per_s: float
    burst: int

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)  # a clock that steps back refills nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated = max(self.updated, now)


class TokenBucketLimiter:
    """The RateLimiter interface in memory; `clock` is monotonic seconds (injectable)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = clock() + sweep_interval_s

    def __len__(self) -> int:
        """The number of buckets held now (for tests and metrics)."""
        return len(self._buckets)

    async def hit(self, key: str, *, rate_per_s: float, burst: int) -> RateDecision:
        return self.hit_now(key, rate_per_s=rate_per_s, burst=burst)

    def hit_now(self, key: str, *, rate_per_s: float, burst: int) -> RateDecision:
        """`hit` for callers outside a coroutine."""
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        now = self._clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(burst), now, rate_per_s, burst)
        else:
            # The caller's current limits apply (configuration may have changed).
            bucket.refill(now)
            bucket.rate_per_s = rate_per_s
            bucket.burst = burst
            bucket.tokens = min(bucket.tokens, float(burst))
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return RateDecision(allowed=True, retry_after_ms=0)
        wait_ms = math.ceil((1.0 - bucket.tokens) / rate_per_s * 1000.0)
        return RateDecision(allowed=False, retry_after_ms=max(1, wait_ms))

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_interval_s
        full = []
        for key, bucket in self._buckets.items():
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                full.append(key)
        for key in full:
            del self._buckets[key]
