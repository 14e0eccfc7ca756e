"""The JSON of `GET /v1/stats`: a node's current figures and cumulative counters.

Counters are cumulative since the process started, so a reader (`relay stats`, a script)
computes rates from two successive reads; the dashboard charts the per-second rates of
`relay.history` instead. The delivery-latency percentiles cover a recent window (see
metrics.RecentLatencies).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from relay.services import Services
from storage.errors import StorageError
from storage.node_records import NodeInfo

NODES_TIMEOUT_S: Final = 1.0  # the node list is worth one short Redis call, not a slow page


@dataclass(frozen=True, slots=True)
class MessageTotals:
    """Envelopes since start: accepted from senders (`in`), deliver frames pushed (`out`),
    acknowledged live, written to the store, and sends refused before acceptance."""

    accepted: int
    pushed: int
    delivered: int
    stored: int
    rejected: int


@dataclass(frozen=True, slots=True)
class MultiSendTotals:
    """`send.multi` frames accepted since start, those with a shared payload, and the
    devices they addressed together."""

    frames: int
    shared: int
    devices: int


@dataclass(frozen=True, slots=True)
class LatencyWindow:
    window_s: float
    count: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class NodeStats:
    """A node of the cluster: its authenticated device connections (live for this node, as
    of its last heartbeat for the others) and how old that heartbeat is."""

    id: str
    connections: int
    heartbeat_age_s: float | None
    this_node: bool


@dataclass(frozen=True, slots=True)
class Stats:
    # The original keys, kept as they were.
    uptime_s: float
    store: str
    connections: int
    authenticated: int
    in_flight: int
    envelopes: dict[str, int]
    sends_in_progress: int
    group_commit: dict[str, int] | None
    # For the dashboard and operators.
    node_id: str
    server_time_ms: int
    connections_opened: int
    handshakes: dict[str, int]
    messages: MessageTotals
    multi_sends: MultiSendTotals
    errors: dict[str, int]
    closes: dict[str, int]
    delivery_latency: LatencyWindow
    stored_messages: int
    # Delivery receipts since start (docs/protocol.md): stored copies that asked for one,
    # receipts made for the senders' devices, receipt frames pushed.
    receipts: dict[str, int]
    event_loop_lag_ms: float
    nodes: list[NodeStats]
    nodes_available: bool  # False: the registry did not answer; `nodes` is this node alone
    # The key-backup extension: users holding a backup (sampled), requests answered `ok`
    # since start by operation, and those refused (any error code).
    backups: dict[str, int]


def store_kind(*, production: bool) -> str:
    """The store's kind, never where it lives: no data directory, no URL (docs/security.md)."""
    return "postgresql+redis" if production else "embedded"


async def node_registry(svc: Services) -> list[NodeInfo] | None:
    """The live nodes from the shared registry; None when it does not answer in time."""
    try:
        async with asyncio.timeout(NODES_TIMEOUT_S):
            return await svc.cluster.nodes()
    except (StorageError, TimeoutError):
        return None


def collect(
    svc: Services, *, started: float, store_kind: str, registry: list[NodeInfo] | None
) -> Stats:
    metrics = svc.metrics
    sessions = svc.router.sessions()
    envelopes = _ints(metrics.totals(metrics.envelopes))
    recent = metrics.delivery_latency.recent.summary()
    node_id = svc.cluster.node_id
    now_ms = svc.clock.now_ms()
    return Stats(
        uptime_s=round(svc.clock.monotonic() - started, 3),
        store=store_kind,
        connections=metrics.open_connections,
        authenticated=len(sessions),
        in_flight=sum(s.in_flight for s in sessions),
        envelopes={
            outcome: envelopes.get(outcome, 0)
            for outcome in ("accepted", "delivered", "stored", "dropped_online")
        },
        sends_in_progress=len(svc.background),
        group_commit=_group_commit(svc),
        node_id=node_id,
        server_time_ms=now_ms,
        connections_opened=int(metrics.total(metrics.connections_opened)),
        handshakes=_ints(metrics.totals(metrics.handshakes)),
        messages=MessageTotals(
            accepted=envelopes.get("accepted", 0),
            pushed=int(metrics.totals(metrics.frames_out).get("deliver", 0)),
            delivered=envelopes.get("delivered", 0),
            stored=envelopes.get("stored", 0),
            rejected=int(metrics.total(metrics.envelopes_rejected)),
        ),
        multi_sends=_multi_sends(svc),
        errors=_ints(metrics.totals(metrics.rejections)),
        closes=_ints(metrics.totals(metrics.closes)),
        delivery_latency=LatencyWindow(
            window_s=recent.window_s,
            count=recent.count,
            p50_ms=_ms(recent.p50_s),
            p99_ms=_ms(recent.p99_s),
        ),
        stored_messages=int(metrics.value(metrics.stored_messages)),
        receipts=_receipts(svc),
        event_loop_lag_ms=round(metrics.value(metrics.loop_lag_last) * 1000, 3),
        nodes=_nodes(node_id, len(sessions), registry, now_ms),
        nodes_available=registry is not None,
        backups=_backups(svc),
    )


def _receipts(svc: Services) -> dict[str, int]:
    metrics = svc.metrics
    counted = _ints(metrics.totals(metrics.receipts))
    return {
        "requested": counted.get("requested", 0),
        "created": counted.get("created", 0),
        "pushed": int(metrics.totals(metrics.frames_out).get("receipt", 0)),
    }


BACKUP_OPERATIONS = ("put", "get", "delete", "recover")


def _backups(svc: Services) -> dict[str, int]:
    metrics = svc.metrics
    counts = metrics.pair_totals(metrics.backup_requests)
    totals = {op: int(counts.get((op, "ok"), 0)) for op in BACKUP_OPERATIONS}
    refused = sum(n for (_, outcome), n in counts.items() if outcome != "ok")
    return {"stored": int(metrics.value(metrics.key_backups)), **totals, "refused": int(refused)}


def _multi_sends(svc: Services) -> MultiSendTotals:
    metrics = svc.metrics
    forms = metrics.totals(metrics.multi_sends)
    return MultiSendTotals(
        frames=int(sum(forms.values())),
        shared=int(forms.get("shared", 0)),
        devices=int(metrics.histogram_sum(metrics.multi_send_devices)),
    )


def _nodes(
    node_id: str, sessions: int, registry: list[NodeInfo] | None, now_ms: int
) -> list[NodeStats]:
    """This node with its live count, then the others of the registry, by id."""
    nodes = [NodeStats(id=node_id, connections=sessions, heartbeat_age_s=0.0, this_node=True)]
    for info in registry or []:
        if info.node_id != node_id:
            nodes.append(
                NodeStats(
                    id=info.node_id,
                    connections=info.connections,
                    heartbeat_age_s=round(max(0, now_ms - info.heartbeat_ms) / 1000, 1),
                    this_node=False,
                )
            )
    return sorted(nodes, key=lambda n: n.id)


def _ints(values: dict[str, float]) -> dict[str, int]:
    return {key: int(value) for key, value in sorted(values.items())}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _group_commit(svc: Services) -> dict[str, int] | None:
    """Batches and envelopes committed by a store that batches its writes."""
    messages = svc.store.messages
    messages = getattr(messages, "inner", messages)  # under encryption at rest's view
    batches = getattr(messages, "batches_committed", None)
    envelopes = getattr(messages, "envelopes_committed", None)
    if isinstance(batches, int) and isinstance(envelopes, int):
        return {"batches": batches, "envelopes": envelopes}
    return None
