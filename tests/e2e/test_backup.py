"""The encrypted key backup extension (docs/protocol.md, "Extension: encrypted key backup"),
tested from the document alone: backup.put with compare-and-set, backup.get, backup.delete,
backup.recover before the handshake followed by a linked registration on the same
challenge, the size limit, the per-user read budget (shared by every node), the audit
trail (`relay audit`), the metrics and /v1/stats. Both stores; two nodes where it matters."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.payloads import backup_recover_payload
from protocol.signatures import IdentityKeyPair, KeyScheme

from .commands import arun_relay
from .stores import StoreProvisioner
from .support import (
    Device,
    RelayProcess,
    error_of,
    link_device,
    new_user,
    now_ms,
    stop_relays,
)

PROTOS = ["msgpack", "json"]


def access_pair() -> IdentityKeyPair:
    """The Ed25519 key pair a client derives from its recovery key (any one will do here)."""
    return IdentityKeyPair.generate(KeyScheme.ED25519)


async def put(device: Device, version: int, blob: bytes, access: IdentityKeyPair) -> dict:
    return await device.request(
        {"t": "backup.put", "version": version, "blob": blob, "access_key": access.public_key}
    )


def recover_frame(device: Device, access: IdentityKeyPair) -> dict[str, Any]:
    assert device.challenge is not None
    payload = backup_recover_payload(device.challenge["nonce"], access.public_key)
    return {
        "t": "backup.recover",
        "rid": device.next_rid(),
        "access_key": access.public_key,
        "signature": access.sign(payload),
    }


@pytest.mark.parametrize("proto", PROTOS)
async def test_put_get_delete(relay, proto):
    started = now_ms()
    first = await new_user(relay.url, proto=proto)
    second = await link_device(first, proto=proto)
    access = access_pair()
    blob = os.urandom(1000)

    error_of(await second.request({"t": "backup.get"}), "not_found")
    answer = await put(first, 0, blob, access)
    assert answer == {"t": "ok", "rid": answer["rid"], "version": 1}, answer
    got = await second.request_ok({"t": "backup.get"})
    assert set(got) == {"t", "rid", "user", "version", "blob", "updated"}
    assert (got["user"], got["version"], got["blob"]) == (first.user, 1, blob)
    assert started - 5_000 <= got["updated"] <= now_ms() + 5_000

    deleted = await second.request({"t": "backup.delete", "version": 1})
    assert deleted == {"t": "ok", "rid": deleted["rid"]}, deleted
    error_of(await first.request({"t": "backup.get"}), "not_found")
    error_of(await first.request({"t": "backup.delete", "version": 1}), "not_found")
    # Versions count on across the delete.
    assert (await put(first, 0, b"again", access))["version"] == 2
    # Another user sees nothing of it.
    other = await new_user(relay.url, proto=proto)
    error_of(await other.request({"t": "backup.get"}), "not_found")
    for d in (first, second, other):
        await d.close()


async def test_compare_and_set_conflict(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    access = access_pair()
    assert (await put(first, 0, b"from the first", access))["version"] == 1
    conflict = await put(second, 0, b"from the second", access)
    error_of(conflict, "conflict")
    assert conflict["version"] == 1, conflict
    assert (await put(second, 1, b"from the second", access))["version"] == 2
    stale = await put(first, 1, b"stale", access)
    error_of(stale, "conflict")
    assert stale["version"] == 2
    stale_delete = await first.request({"t": "backup.delete", "version": 1})
    error_of(stale_delete, "conflict")
    assert stale_delete["version"] == 2
    got = await first.request_ok({"t": "backup.get"})
    assert (got["version"], got["blob"]) == (2, b"from the second")
    # An access key is one user's: another user's put with it is a conflict without version.
    other = await new_user(relay.url)
    taken = await put(other, 0, b"mine", access)
    error_of(taken, "conflict")
    assert "version" not in taken, taken
    for d in (first, second, other):
        await d.close()


async def test_frame_checks(relay):
    device = await new_user(relay.url)
    access = access_pair()
    error_of(await put(device, 0, os.urandom(64 * 1024 + 1), access), "too_large")
    assert (await put(device, 0, os.urandom(64 * 1024), access))["version"] == 1
    bad_key = await device.request(
        {"t": "backup.put", "version": 1, "blob": b"x", "access_key": b"short"}
    )
    error_of(bad_key, "bad_frame")
    error_of(await device.request({"t": "backup.delete", "version": 0}), "bad_frame")
    error_of(
        await device.request(
            {"t": "backup.put", "version": -1, "blob": b"x", "access_key": access.public_key}
        ),
        "bad_frame",
    )
    # After the handshake, a recovery is refused as a second register is; the connection
    # stays open.
    late = recover_frame(device, access)
    error_of(await device.request(late), "forbidden")
    assert (await device.request_ok({"t": "backup.get"}))["version"] == 1
    # Before the handshake, the authenticated frames are refused as v1 refuses any other.
    stranger = Device(relay.url)
    await stranger.connect()
    error_of(await stranger.request({"t": "backup.get"}), "unauthenticated")
    assert await stranger.closed_code() == 1008
    await device.close()


async def test_size_limit_is_configurable(relay_factory):
    relay = relay_factory(max_backup_bytes=100)
    device = await new_user(relay.url)
    access = access_pair()
    error_of(await put(device, 0, os.urandom(101), access), "too_large")
    assert (await put(device, 0, os.urandom(100), access))["version"] == 1
    await device.close()


async def test_a_lower_body_limit_bounds_the_backup_too(relay_factory):
    """A relay configured with small frames (and so small bodies) keeps starting with the
    default backup limit; its blobs are then bounded by the body limit, with `too_large`."""
    relay = relay_factory(max_frame_bytes=8192, max_body_bytes=4096)
    device = await new_user(relay.url)
    access = access_pair()
    error_of(await put(device, 0, os.urandom(4097), access), "too_large")
    assert (await put(device, 0, os.urandom(4096), access))["version"] == 1
    await device.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_recover_then_link_on_the_same_challenge(relay, proto):
    first = await new_user(relay.url, proto=proto)
    access = access_pair()
    blob = os.urandom(300)
    assert (await put(first, 0, blob, access))["version"] == 1

    restored = Device(relay.url, proto=proto)
    await restored.connect()
    got = await restored.request(recover_frame(restored, access))
    assert got["t"] == "ok", got
    assert (got["user"], got["version"], got["blob"]) == (first.user, 1, blob)
    # The restored device links itself with the saving device's identity key (which the
    # blob holds in a real client; here the test has it), on the same connection.
    answer = await restored.request(restored.register_frame(link_by=first))
    assert answer["t"] == "ok", answer
    assert (answer["user"], answer["device"]) == (first.user, 2)
    listed = await restored.request_ok({"t": "devices.list"})
    assert [d["device"] for d in listed["devices"]] == [1, 2]
    await first.close()
    await restored.close()


async def test_recover_refusals_close_the_connection(relay):
    first = await new_user(relay.url)
    access = access_pair()
    await put(first, 0, b"blob", access)

    cases: list[tuple[str, Any]] = []
    wrong = Device(relay.url)
    await wrong.connect()
    frame = recover_frame(wrong, access)
    frame["signature"] = access_pair().sign(b"something else")
    cases.append(("auth_failed", await wrong.request(frame)))
    assert await wrong.closed_code() == 1008

    unknown = Device(relay.url)
    await unknown.connect()
    cases.append(("not_found", await unknown.request(recover_frame(unknown, access_pair()))))
    assert await unknown.closed_code() == 1008

    twice = Device(relay.url)
    await twice.connect()
    assert (await twice.request(recover_frame(twice, access)))["t"] == "ok"
    cases.append(("forbidden", await twice.request(recover_frame(twice, access))))
    assert await twice.closed_code() == 1008

    replayed = Device(relay.url)  # a signature over another connection's challenge
    await replayed.connect()
    other = Device(relay.url)
    await other.connect()
    stolen = recover_frame(other, access)
    stolen["rid"] = replayed.next_rid()
    cases.append(("auth_failed", await replayed.request(stolen)))
    assert await replayed.closed_code() == 1008
    await other.close()

    for code, answer in cases:
        error_of(answer, code)
        assert isinstance(answer.get("rid"), int), answer
    await first.close()


async def test_reads_are_limited_per_user(relay_factory):
    relay = relay_factory(rate_backup_reads=3)
    first = await new_user(relay.url)
    second = await link_device(first)
    access = access_pair()
    await put(first, 0, b"blob", access)
    await first.request_ok({"t": "backup.get"})
    await second.request_ok({"t": "backup.get"})
    recovering = Device(relay.url)
    await recovering.connect()
    assert (await recovering.request(recover_frame(recovering, access)))["t"] == "ok"
    await recovering.close()
    # The budget is the user's: every device and recovery spent from it.
    refused = await second.request({"t": "backup.get"})
    error_of(refused, "rate_limited")
    assert 0 < refused["retry_after_ms"] <= 86_400_000 / 3 + 1000, refused
    late = Device(relay.url)
    await late.connect()
    error_of(await late.request(recover_frame(late, access)), "rate_limited")
    assert await late.closed_code() == 1008
    # Writes are not reads: a put still goes through, and another user has its own budget.
    assert (await put(first, 1, b"newer", access))["version"] == 2
    other = await new_user(relay.url)
    error_of(await other.request({"t": "backup.get"}), "not_found")
    for d in (first, second, other):
        await d.close()


async def test_audit_stats_and_metrics(relay):
    first = await new_user(relay.url)
    second = await link_device(first)
    access = access_pair()
    before = orjson.loads((await relay.ahttp_get("/v1/stats"))[2])["backups"]
    await put(first, 0, b"blob", access)
    error_of(await put(second, 0, b"lost race", access), "conflict")
    await second.request_ok({"t": "backup.get"})
    recovering = Device(relay.url)
    await recovering.connect()
    assert (await recovering.request(recover_frame(recovering, access)))["t"] == "ok"
    await recovering.close()
    assert (await second.request({"t": "backup.delete", "version": 1}))["t"] == "ok"

    store_args = ["--data-dir", str(relay.data_dir)]
    result = await arun_relay(["audit", first.user, "--json", *store_args], dict(relay.extra_env))
    assert result.code == 0, result.stderr
    events = [
        (e["device"], e["kind"], e["detail"])
        for e in orjson.loads(result.stdout)["events"]
        if e["kind"].startswith("backup_")
    ]
    assert events == [
        (1, "backup_put", {"version": 1}),
        (2, "backup_get", {"version": 1, "via": "device"}),
        (0, "backup_get", {"version": 1, "via": "recovery"}),
        (2, "backup_delete", {"version": 1}),
    ]
    text = await arun_relay(["audit", first.user, *store_args], dict(relay.extra_env))
    assert "backup_get" in text.stdout and "via=recovery" in text.stdout, text.stdout

    after = orjson.loads((await relay.ahttp_get("/v1/stats"))[2])["backups"]
    for operation in ("put", "get", "delete", "recover"):
        assert after[operation] == before[operation] + 1, (operation, before, after)
    assert after["refused"] == before["refused"] + 1
    _, _, body = await relay.ahttp_get("/metrics")
    assert b'relay_backup_requests_total{operation="put",outcome="conflict"}' in body
    assert b"relay_key_backups " in body
    for d in (first, second):
        await d.close()


# Two nodes sharing one PostgreSQL and Redis


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RelayProcess]]:
    provisioner = StoreProvisioner("production")
    env = provisioner.new_store_env()
    root: Path = tmp_path_factory.mktemp("backup-nodes")
    nodes = [
        RelayProcess(root / name, {"node_id": name, "rate_backup_reads": 4}, env=env)
        for name in ("a", "b")
    ]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        problems = stop_relays(nodes)
        provisioner.cleanup()
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


async def test_across_two_nodes(two_nodes):
    a, b = two_nodes
    on_a = await new_user(a.url)
    on_b = await link_device(on_a)
    on_b.url = b.url
    await on_b.reconnect()
    access = access_pair()
    assert (await put(on_a, 0, b"from a", access))["version"] == 1
    # Compare-and-set holds across nodes: b's put of version 0 loses.
    conflict = await put(on_b, 0, b"from b", access)
    error_of(conflict, "conflict")
    assert conflict["version"] == 1
    got = await on_b.request_ok({"t": "backup.get"})
    assert (got["version"], got["blob"]) == (1, b"from a")
    # The read budget (4 a day) is shared: 1 read on b, 2 on a, 1 recovery on b.
    await on_a.request_ok({"t": "backup.get"})
    await on_a.request_ok({"t": "backup.get"})
    recovering = Device(b.url)
    await recovering.connect()
    assert (await recovering.request(recover_frame(recovering, access)))["t"] == "ok"
    await recovering.close()
    error_of(await on_a.request({"t": "backup.get"}), "rate_limited")
    error_of(await on_b.request({"t": "backup.get"}), "rate_limited")
    for d in (on_a, on_b):
        await d.close()
