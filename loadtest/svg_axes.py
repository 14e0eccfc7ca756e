"""Scales and ticks for the SVG charts: data values to pixels, round tick values, labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

HEADROOM = 1.04


class Scale(Protocol):
    """Data value → pixel coordinate over [lo, hi]."""

    @property
    def lo(self) -> float: ...

    @property
    def hi(self) -> float: ...

    def __call__(self, v: float) -> float: ...

    def ticks(self) -> list[float]: ...

    def accepts(self, v: float) -> bool: ...


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times 10^n) from below `lo` to at least `hi`."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    ticks: list[float] = []
    t = math.floor(lo / step) * step
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def x_ticks(lo: float, hi: float) -> list[float]:
    """About eight round ticks inside [lo, hi], and `hi` itself when no tick lands near it."""
    ticks = [t for t in nice_ticks(lo, hi, 8) if lo - 1e-9 <= t <= hi + 1e-9]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else hi - lo
    if hi - ticks[-1] > 0.35 * step:
        ticks.append(hi)
    return ticks


@dataclass(frozen=True, slots=True)
class LinearScale:
    lo: float
    hi: float
    px_lo: float
    px_hi: float
    tick_values: tuple[float, ...] = ()

    @classmethod
    def from_zero(cls, top_value: float, px_lo: float, px_hi: float) -> LinearScale:
        """From 0 to a round value a little above `top_value` (lines stay off the frame)."""
        ticks = nice_ticks(0.0, top_value * HEADROOM) if top_value > 0 else [0.0, 1.0]
        return cls(0.0, ticks[-1], px_lo, px_hi, tuple(ticks))

    def __call__(self, v: float) -> float:
        return self.px_lo + (v - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)

    def ticks(self) -> list[float]:
        return list(self.tick_values)

    def accepts(self, v: float) -> bool:
        return math.isfinite(v)


@dataclass(frozen=True, slots=True)
class LogScale:
    """Base 10, whole decades from below the smallest to above the largest value."""

    lo_exp: int
    hi_exp: int
    px_lo: float
    px_hi: float

    @property
    def lo(self) -> float:
        return 10.0**self.lo_exp

    @property
    def hi(self) -> float:
        return 10.0**self.hi_exp

    def __call__(self, v: float) -> float:
        frac = (math.log10(v) - self.lo_exp) / (self.hi_exp - self.lo_exp)
        return self.px_lo + frac * (self.px_hi - self.px_lo)

    def ticks(self) -> list[float]:
        return [10.0**e for e in range(self.lo_exp, self.hi_exp + 1)]

    def accepts(self, v: float) -> bool:
        return v > 0 and math.isfinite(v)


def log_scale(values: list[float], px_lo: float, px_hi: float) -> LogScale:
    if not values:
        return LogScale(0, 1, px_lo, px_hi)
    lo_exp = math.floor(math.log10(min(values)))
    hi_exp = max(math.ceil(math.log10(max(values))), lo_exp + 1)
    return LogScale(lo_exp, hi_exp, px_lo, px_hi)


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    if abs(v) >= 1:
        return f"{v:.4g}"
    return f"{v:.3g}"


def fmt_value(v: float) -> str:
    """A value for a tooltip: thousands separated, four significant digits below 1,000."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"
