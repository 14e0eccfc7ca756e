"""Prometheus metrics of one relay process, in a registry of its own (no module singletons).

Names follow Prometheus conventions: the `relay_` prefix, base units (`_seconds`, `_bytes`)
and `_total` for counters. Label values are fixed vocabularies (frame types, error codes,
outcomes, backend operation names): never a user or device identifier.

Besides the registry, a small rolling window of recent delivery latencies feeds the
p50/p99 of `/v1/stats` (a histogram's buckets are too coarse for a live chart).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.metrics import MetricWrapperBase

from relay.clock import SystemClock

_SYSTEM_CLOCK = SystemClock()
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BACKEND_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
MULTI_DEVICE_BUCKETS = (1, 3, 10, 30, 100, 300, 1000, 3000)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

RECENT_WINDOW_S = 60.0  # the /v1/stats percentiles cover the last minute of deliveries
RECENT_MAX = 4096  # ... or its last RECENT_MAX deliveries, whichever is fewer


_M = TypeVar("_M", bound="_BoundChildren")


class _BoundChildren(MetricWrapperBase):
    """A labelled metric whose children are looked up in a plain dict once bound:
    prometheus_client's `labels()` takes a lock and converts every value on each call, too
    much for paths taken on every frame. Label values are fixed vocabularies, so the dict
    stays small."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bound: dict[tuple[object, ...], Any] = {}

    def labels(self: _M, *labelvalues: object, **labelkwargs: object) -> _M:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)
        child: _M | None = self._bound.get(labelvalues)
        if child is None:
            child = self._bound[labelvalues] = super().labels(*labelvalues)
        return child


class LabelledCounter(_BoundChildren, Counter):
    """A Counter with bound children (see _BoundChildren)."""


class LabelledHistogram(_BoundChildren, Histogram):
    """A Histogram with bound children (see _BoundChildren)."""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of the recent live deliveries (None when there were none)."""

    window_s: float
    count: int
    p50_s: float | None
    p99_s: float | None


class RecentLatencies:
    """The last minute of latencies, bounded in size, for percentiles on demand."""

    def __init__(
        self,
        *,
        window_s: float = RECENT_WINDOW_S,
        max_samples: int = RECENT_MAX,
        clock: Callable[[], float] = _SYSTEM_CLOCK.monotonic,
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, seconds: float) -> None:
        self._samples.append((self._clock(), seconds))

    def summary(self) -> LatencySummary:
        horizon = self._clock() - self._window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        values = sorted(v for _, v in self._samples)
        if not values:
            return LatencySummary(window_s=self._window_s, count=0, p50_s=None, p99_s=None)
        return LatencySummary(
            window_s=self._window_s,
            count=len(values),
            p50_s=_percentile(values, 0.50),
            p99_s=_percentile(values, 0.99),
        )


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class DeliveryLatency:
    """Accept → ack of live deliveries: the Prometheus histogram and the recent window."""

    def __init__(self, histogram: Histogram, recent: RecentLatencies) -> None:
        self._histogram = histogram
        self.recent = recent

    def observe(self, seconds: float) -> None:
        self._histogram.observe(seconds)
        self.recent.add(seconds)


class Metrics:
    def __init__(self) -> None:
        # The process, platform and GC collectors describe no names: with this, a scrape
        # restricted to some names (`/metrics?name[]=...`, relay.http) runs them too and
        # keeps their samples of those names.
        self.registry = CollectorRegistry(support_collectors_without_names=True)
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.connections = Gauge("relay_connections", "Open WebSocket connections.", registry=r)
        self.connections_opened = Counter(
            "relay_connections_opened_total", "WebSocket connections accepted.", registry=r
        )
        self.authenticated = Gauge(
            "relay_authenticated_connections", "Connections past the handshake.", registry=r
        )
        self.handshakes = LabelledCounter(
            "relay_handshakes_total", "Handshakes by result.", ["result"], registry=r
        )
        self.frames_in = LabelledCounter(
            "relay_frames_received_total", "Frames received by type.", ["type"], registry=r
        )
        self.frames_out = LabelledCounter(
            "relay_frames_sent_total", "Frames sent by type.", ["type"], registry=r
        )
        self.envelopes = LabelledCounter(
            "relay_envelopes_total",
            "Device envelopes by outcome (accepted, delivered, stored, dropped_online).",
            ["outcome"],
            registry=r,
        )
        self.envelopes_rejected = LabelledCounter(
            "relay_envelopes_rejected_total",
            "Sends refused before acceptance, by reason (the error code), one per send frame.",
            ["reason"],
            registry=r,
        )
        self.receipts = LabelledCounter(
            "relay_receipts_total",
            "Delivery receipts (docs/protocol.md): stored copies that asked for one"
            " (requested), receipts made for the sender's devices when such a copy was"
            " acknowledged (created; pushed ones count in relay_frames_sent_total).",
            ["event"],
            registry=r,
        )
        self.multi_sends = LabelledCounter(
            "relay_multi_sends_total",
            "send.multi frames accepted, by body form (shared: one payload and per-device "
            "headers; per_device: a whole ciphertext per device).",
            ["form"],
            registry=r,
        )
        self.multi_send_devices = Histogram(
            "relay_multi_send_devices",
            "Devices addressed by one accepted send.multi frame.",
            buckets=MULTI_DEVICE_BUCKETS,
            registry=r,
        )
        self.undecryptable = LabelledCounter(
            "relay_envelopes_undecryptable_total",
            "Stored envelopes skipped because they did not open (encryption at rest), by reason"
            " (unknown_key, does_not_open).",
            ["reason"],
            registry=r,
        )
        self.rejections = LabelledCounter(
            "relay_requests_rejected_total",
            "Requests answered with an error, by code.",
            ["code"],
            registry=r,
        )
        self._delivery_histogram = Histogram(
            "relay_delivery_latency_seconds",
            "From accepting a live envelope to its ack.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = DeliveryLatency(self._delivery_histogram, RecentLatencies())
        self.ack_wait = Histogram(
            "relay_ack_wait_seconds",
            "How long a send waited for the acks of its live deliveries (up to the ack timeout).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ack_timeouts = Counter(
            "relay_ack_timeouts_total",
            "Live deliveries whose ack did not come within the ack timeout (then stored).",
            registry=r,
        )
        self.replay_rejections = Counter(
            "relay_replay_rejections_total",
            "Sends refused because their nonce was used by another message.",
            registry=r,
        )
        self.prekey_low_water = Counter(
            "relay_prekey_low_water_total",
            "Devices whose one-time pre-keys fell below the low-water mark (keys.low events).",
            registry=r,
        )
        self.prekeys_withheld = Counter(
            "relay_prekeys_withheld_total",
            "Bundles handed out without one-time keys: the target device's hourly budget "
            "(--rate-prekeys-per-target) was spent.",
            registry=r,
        )
        self.stored_messages = Gauge(
            "relay_stored_messages",
            "Envelopes waiting in the store for their device's ack (refreshed periodically).",
            registry=r,
        )
        self.backup_requests = LabelledCounter(
            "relay_backup_requests_total",
            "Key backup requests (backup.put, backup.get, backup.delete, backup.recover) by "
            "operation and outcome (ok or the error code).",
            ["operation", "outcome"],
            registry=r,
        )
        self.key_backups = Gauge(
            "relay_key_backups",
            "Users holding a key backup (refreshed periodically).",
            registry=r,
        )
        self.backend_latency = LabelledHistogram(
            "relay_backend_call_duration_seconds",
            "Calls to a storage backend (postgresql, postgresql_replica, redis, sqlite)"
            " by operation.",
            ["backend", "operation"],
            buckets=BACKEND_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "relay_event_loop_lag_seconds",
            "How late a periodic event-loop timer fired.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_last = Gauge(
            "relay_event_loop_lag_last_seconds",
            "The event-loop lag measured most recently.",
            registry=r,
        )
        self.closes = LabelledCounter(
            "relay_connection_closes_total",
            "Connections closed by close code.",
            ["code"],
            registry=r,
        )
        self.stored_messages.set(0)
        self.key_backups.set(0)
        self.loop_lag_last.set(0)
        self.open_connections = 0

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.connections.inc()
        self.connections_opened.inc()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.connections.dec()

    def observe_backend(self, backend: str, operation: str, seconds: float) -> None:
        """The store's observer hook (see BackendObserver). Thread-safe: the embedded store
        reports from its worker thread."""
        self.backend_latency.labels(backend, operation).observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)
        self.loop_lag_last.set(seconds)

    def exposition(self, names: Collection[str] | None = None) -> bytes:
        """The text exposition; with `names`, only those series (and the collectors that
        make them are the only ones run)."""
        if names is None:
            return generate_latest(self.registry)
        return generate_latest(self.registry.restricted_registry(names))

    # Totals for /v1/stats, read from the metrics themselves (one source of truth).

    def pair_totals(self, counter: Counter) -> dict[tuple[str, str], float]:
        """A counter with two labels: its `_total` samples by their label values."""
        found: dict[tuple[str, str], float] = {}
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and len(sample.labels) == 2:
                    first, second = sample.labels.values()
                    found[(first, second)] = found.get((first, second), 0.0) + sample.value
        return found

    def totals(self, counter: Counter) -> dict[str, float]:
        """A labelled counter's `_total` samples by their (single) label value."""
        found: dict[str, float] = {}
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = next(iter(sample.labels.values()), "")
                    found[key] = found.get(key, 0.0) + sample.value
        return found

    def total(self, counter: Counter) -> float:
        return sum(self.totals(counter).values())

    @staticmethod
    def histogram_sum(histogram: Histogram) -> float:
        """An unlabelled histogram's sum of observations."""
        for family in histogram.collect():
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    return float(sample.value)
        return 0.0

    @staticmethod
    def value(gauge: Gauge) -> float:
        """An unlabelled gauge's current value."""
        for family in gauge.collect():
            for sample in family.samples:
                return float(sample.value)
        return 0.0
