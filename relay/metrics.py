"""Prometheus metrics of one relay process, in a registry of its own (no module singletons)."""

from __future__ import annotations

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        r = self.registry
        self.connections = Gauge("relay_connections", "Open WebSocket connections.", registry=r)
        self.authenticated = Gauge(
            "relay_authenticated_connections", "Connections past the handshake.", registry=r
        )
        self.handshakes = Counter(
            "relay_handshakes_total", "Handshakes by result.", ["result"], registry=r
        )
        self.frames_in = Counter(
            "relay_frames_received_total", "Frames received by type.", ["type"], registry=r
        )
        self.frames_out = Counter(
            "relay_frames_sent_total", "Frames sent by type.", ["type"], registry=r
        )
        self.envelopes = Counter(
            "relay_envelopes_total",
            "Device envelopes by outcome (accepted, delivered, stored, dropped_online).",
            ["outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "relay_requests_rejected_total",
            "Requests answered with an error, by code.",
            ["code"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "relay_delivery_latency_seconds",
            "From accepting a live envelope to its ack.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.closes = Counter(
            "relay_connection_closes_total",
            "Connections closed by close code.",
            ["code"],
            registry=r,
        )

        self.open_connections = 0

    def connection_opened(self) -> None:
        self.open_connections += 1
        self.connections.inc()

    def connection_closed(self) -> None:
        self.open_connections -= 1
        self.connections.dec()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
