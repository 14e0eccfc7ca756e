"""A token bucket for limits that belong to one connection (requests, bad frames).

A device has exactly one connection at a time (the newest replaces the older,
on every node), so its per-device request limit is exact when kept here, and
costs no store round trip. Limits that must outlive a connection (`keys.fetch`)
use the store's rate limiter instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class TokenBucket:
    def __init__(self, *, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> int:
        """Take one token: 0 when allowed, else the milliseconds until one is back."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self._tokens) / self._rate * 1000))
