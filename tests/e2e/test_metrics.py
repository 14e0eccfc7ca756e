"""`/metrics` and `/v1/stats` under a small scripted load: every metric family of the
operations issue exists, and the deterministic ones move by exactly what the load did."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .stores import StoreProvisioner
from .support import (
    REPO_ROOT,
    RelayProcess,
    error_of,
    new_nonce,
    new_user,
    offline_user,
    prekey,
    signed_prekey,
    stop_relays,
    wait_until,
)

ONLINE_SENDS = 5  # N: to a connected device that acks
OFFLINE_SENDS = 3  # M: to a device that is not connected, drained later
NODE_ID = "metrics-node-1"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)

FAMILIES = (
    "relay_connections",
    "relay_handshakes",
    "relay_frames_received",
    "relay_frames_sent",
    "relay_envelopes",
    "relay_envelopes_rejected",
    "relay_requests_rejected",
    "relay_delivery_latency_seconds",
    "relay_ack_wait_seconds",
    "relay_ack_timeouts",
    "relay_replay_rejections",
    "relay_prekey_low_water",
    "relay_stored_messages",
    "relay_backend_call_duration_seconds",
    "relay_event_loop_lag_seconds",
    "relay_event_loop_lag_last_seconds",
    "relay_connection_closes",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
    "process_open_fds",
)


@dataclass(frozen=True)
class Scrape:
    """One parsed /metrics answer."""

    families: dict[str, str]  # family name -> type
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(key)[label] for sample, key in self.samples if sample == name and key}


async def scrape(relay: RelayProcess) -> Scrape:
    status, headers, body = await relay.ahttp_get("/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    families: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(families, samples)


async def stats(relay: RelayProcess) -> dict[str, Any]:
    status, _, body = await relay.ahttp_get("/v1/stats")
    assert status == 200
    document = orjson.loads(body)
    assert isinstance(document, dict)
    return document


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def test_metrics_move_under_a_scripted_load(relay_factory: Any) -> None:
    relay = relay_factory(node_id=NODE_ID)
    before = await scrape(relay)
    stats_before = await stats(relay)

    sender = await new_user(relay.url)
    online = await new_user(relay.url, auto_ack=True)
    await online.next_push("queue_empty")
    (offline,) = await offline_user(relay.url)
    owner = await new_user(relay.url)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(i) for i in range(11)]
    )

    # N live sends, acknowledged at once.
    nonces = []
    for _ in range(ONLINE_SENDS):
        nonce = new_nonce()
        nonces.append(nonce)
        answer = await sender.send_message(online, nonce=nonce)
        assert answer["t"] == "ok" and answer["delivered"] == [1], answer
    # M sends to a device that is not connected: stored.
    for _ in range(OFFLINE_SENDS):
        answer = await sender.send_message(offline)
        assert answer["t"] == "ok" and answer["stored"] == [1], answer
    # A replayed nonce (another message id), then a malformed send.
    error_of(await sender.send_message(online, nonce=nonces[0]), "replay")
    error_of(await sender.request({"t": "send", "rid": sender.next_rid()}), "bad_frame")
    # Two fetches take the owner's one-time pre-keys from 11 to 9: below the mark of 10.
    for _ in range(2):
        assert owner.user is not None
        fetched = await sender.fetch(owner.user)
        assert fetched["t"] == "ok", fetched
    await owner.next_push("keys.low")

    async def queue_depth_is(expected: int) -> bool:
        return (await scrape(relay)).value("relay_stored_messages") == expected

    await wait_until(lambda: queue_depth_is(OFFLINE_SENDS), 20, "the stored-message gauge at M")
    await offline.reconnect()
    drained = await offline.drain()
    assert len(drained) == OFFLINE_SENDS
    await offline.sync()  # the acks took effect
    await wait_until(lambda: queue_depth_is(0), 20, "the stored-message gauge back to 0")

    during = await scrape(relay)
    assert during.value("relay_connections") - before.value("relay_connections") == 4
    for device in (sender, online, offline, owner):
        await device.close()

    async def all_closed() -> Scrape | None:
        now = await scrape(relay)
        return now if now.value("relay_connections") == before.value("relay_connections") else None

    after: Scrape = await wait_until(all_closed, 10, "every connection closed in /metrics")

    missing = [name for name in FAMILIES if name not in after.families]
    assert not missing, f"metric families missing: {missing}"

    sends = ONLINE_SENDS + OFFLINE_SENDS
    expected = {
        ("relay_envelopes_total", ("outcome", "accepted")): sends,
        ("relay_envelopes_total", ("outcome", "delivered")): ONLINE_SENDS,
        ("relay_envelopes_total", ("outcome", "stored")): OFFLINE_SENDS,
        ("relay_envelopes_rejected_total", ("reason", "replay")): 1,
        ("relay_replay_rejections_total", None): 1,
        ("relay_prekey_low_water_total", None): 1,
        ("relay_requests_rejected_total", ("code", "replay")): 1,
        ("relay_requests_rejected_total", ("code", "bad_frame")): 1,
        # register x4 (sender, online, offline, owner), then the offline device's auth.
        ("relay_handshakes_total", ("result", "ok")): 5,
        ("relay_connections_opened_total", None): 5,
        ("relay_frames_received_total", ("type", "send")): sends + 1,
        ("relay_frames_received_total", ("type", "invalid")): 1,
        ("relay_frames_received_total", ("type", "keys.fetch")): 2,
        ("relay_frames_sent_total", ("type", "deliver")): sends,
        ("relay_frames_sent_total", ("type", "keys.low")): 1,
        ("relay_delivery_latency_seconds_count", None): ONLINE_SENDS,
        ("relay_ack_wait_seconds_count", None): ONLINE_SENDS,
        ("relay_ack_timeouts_total", None): 0,
    }
    for (name, pair), amount in expected.items():
        labels = dict([pair]) if pair else {}
        assert moved(before, after, name, **labels) == amount, (name, labels)
    assert after.value("relay_stored_messages") == 0
    assert after.value("relay_event_loop_lag_seconds_count") > 0
    assert after.value("process_resident_memory_bytes") > 0

    # Backend call latency: the store's own operations, by fixed names.
    operations = {
        (dict(key)["backend"], dict(key)["operation"])
        for sample, key in after.samples
        if sample == "relay_backend_call_duration_seconds_count"
    }
    backends = {backend for backend, _ in operations}
    if "RELAY_DATABASE_URL" in relay.extra_env:
        assert {"postgresql", "redis"} <= backends, operations
        for wanted in (
            ("postgresql", "claim_prekeys"),
            ("postgresql", "write_batch"),
            ("postgresql", "list_devices"),
            ("postgresql", "stored_count"),
            ("redis", "replay"),
            ("redis", "rate_limit"),
        ):
            assert wanted in operations, (wanted, operations)
            assert after.value("relay_backend_call_duration_seconds_count", **_labels(wanted)) > 0
    else:
        assert backends == {"sqlite"}, operations
        assert (
            after.value("relay_backend_call_duration_seconds_count", **_labels(("sqlite", "batch")))
            > 0
        )

    # No user or device identifier in any label.
    for _, sample_labels in after.samples:
        for label_name, label_value in sample_labels:
            assert not UUID.search(label_value), f"{label_name}={label_value!r} looks like an id"

    # /v1/stats: the old keys stay, the new ones moved the same way.
    stats_after = await stats(relay)
    for stat in stats_before:
        assert stat in stats_after
    for stat in (
        "uptime_s",
        "store",
        "connections",
        "authenticated",
        "in_flight",
        "envelopes",
        "sends_in_progress",
        "group_commit",
    ):
        assert stat in stats_after, stat
    messages_before, messages_after = stats_before["messages"], stats_after["messages"]
    assert messages_after["accepted"] - messages_before["accepted"] == sends
    assert messages_after["pushed"] - messages_before["pushed"] == sends
    assert messages_after["delivered"] - messages_before["delivered"] == ONLINE_SENDS
    assert messages_after["stored"] - messages_before["stored"] == OFFLINE_SENDS
    assert messages_after["rejected"] - messages_before["rejected"] == 1
    assert stats_after["envelopes"]["accepted"] - stats_before["envelopes"]["accepted"] == sends
    assert stats_after["errors"].get("replay", 0) - stats_before["errors"].get("replay", 0) == 1
    assert stats_after["connections_opened"] - stats_before["connections_opened"] == 5
    latency = stats_after["delivery_latency"]
    assert latency["count"] == ONLINE_SENDS
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert stats_after["stored_messages"] == 0
    assert stats_after["node_id"] == NODE_ID
    nodes = stats_after["nodes"]
    assert stats_after["nodes_available"] is True
    assert [n["id"] for n in nodes if n.get("this_node")] == [NODE_ID], nodes
    assert all(isinstance(n["connections"], int) for n in nodes)


def _labels(pair: tuple[str, str]) -> Mapping[str, str]:
    return {"backend": pair[0], "operation": pair[1]}


async def test_rejected_sends_are_counted_by_reason(relay: RelayProcess) -> None:
    """A send refused by a later check is counted under its own code."""
    sender = await new_user(relay.url)
    target = await new_user(relay.url)
    before = await scrape(relay)
    # Device 2 does not exist: mismatched_devices.
    error_of(await sender.send_message(target, [1, 2]), "mismatched_devices")
    error_of(await sender.send_message(target, ts=1), "stale_timestamp")
    after = await scrape(relay)
    for reason in ("mismatched_devices", "stale_timestamp"):
        assert moved(before, after, "relay_envelopes_rejected_total", reason=reason) == 1
    assert moved(before, after, "relay_envelopes_total", outcome="accepted") == 0
    for device in (sender, target):
        await device.close()


METRIC_NAME = re.compile(r"\b((?:relay|process)_[a-z_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


async def test_grafana_dashboard_uses_only_exposed_metrics(relay: RelayProcess) -> None:
    """ops/grafana/relay.json queries families that /metrics really has."""
    dashboard = orjson.loads((REPO_ROOT / "ops" / "grafana" / "relay.json").read_bytes())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) > 20
    exposed = await scrape(relay)
    names = set(exposed.families)
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    for name in used:
        base = name
        for suffix in (*HISTOGRAM_SUFFIXES, "_total"):
            if name.endswith(suffix) and name.removesuffix(suffix) in names:
                base = name.removesuffix(suffix)
        assert base in names, f"the dashboard queries {name}, which /metrics does not have"


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    """Two relays sharing one PostgreSQL database and Redis prefix (production only)."""
    provisioner = StoreProvisioner("production")
    env = provisioner.new_store_env()
    # A short presence TTL: the heartbeats (every TTL / 3) carry connection counts sooner.
    options = {"presence_ttl": 3}
    nodes = [
        RelayProcess(tmp_path / name, {"node_id": name, **options}, env=env)
        for name in ("east", "west")
    ]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        problems = stop_relays(nodes)
        provisioner.cleanup()
        assert not problems, problems


async def test_stats_list_every_node_sharing_redis(two_nodes: list[RelayProcess]) -> None:
    east, west = two_nodes
    device = await new_user(west.url)  # one device connected to west

    async def both_listed() -> list[dict[str, Any]] | None:
        document = await stats(east)
        nodes: list[dict[str, Any]] = document["nodes"]
        west_row = [n for n in nodes if n["id"] == "west"]
        return nodes if west_row and west_row[0]["connections"] == 1 else None

    nodes = await wait_until(both_listed, 20, "east's /v1/stats listing west and its device")
    assert [(n["id"], n["this_node"]) for n in nodes] == [("east", True), ("west", False)]
    assert nodes[1]["heartbeat_age_s"] >= 0
    own = await stats(west)
    assert own["node_id"] == "west" and own["nodes_available"] is True
    assert [(n["id"], n["this_node"], n["connections"]) for n in own["nodes"]] == [
        ("east", False, 0),
        ("west", True, 1),
    ]
    await device.close()
