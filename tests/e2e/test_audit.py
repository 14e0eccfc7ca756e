"""Issue 14, part 3: `relay audit USER` prints the key events a real relay recorded in its
store (both stores), as text or JSON, since a time; the purge (`relay purge` and the running
relay's purge task) deletes the events older than --audit-retention."""

from __future__ import annotations

import uuid

import orjson

from .commands import arun_relay, run_relay
from .support import (
    link_device,
    new_user,
    now_ms,
    pq_prekey,
    prekey,
    signed_prekey,
    wait_until,
)


def _store_args(relay) -> tuple[list[str], dict[str, str]]:
    """The flags and environment that point an admin command at this relay's store."""
    return ["--data-dir", str(relay.data_dir)], dict(relay.extra_env)


async def _audit(relay, *args: str) -> dict:
    store_args, env = _store_args(relay)
    result = await arun_relay(["audit", *args, "--json", *store_args], env)
    assert result.code == 0, result.stderr
    return orjson.loads(result.stdout)


async def test_audit_prints_a_users_key_events(relay):
    started = now_ms()
    alice = await new_user(relay.url)
    phone = await link_device(alice)
    answer = await alice.upload(
        signed_prekey=signed_prekey(alice.identity, 7),
        prekeys=[prekey(1)],
        pq_prekeys=[pq_prekey(alice.identity, 3)],
        pq_last_resort=pq_prekey(alice.identity, 9),
    )
    assert answer["t"] == "ok", answer
    bob = await new_user(relay.url)
    for _ in range(2):  # the one-time key, then none left
        fetched = await bob.fetch(alice.user, 1)
        assert fetched["t"] == "ok", fetched
    removed = await alice.request({"t": "devices.remove", "device": 2})
    assert removed["t"] == "ok", removed

    document = await _audit(relay, alice.user.upper())
    assert document["user"] == alice.user
    events = document["events"]
    assert [(e["device"], e["kind"]) for e in events] == [
        (1, "register"),
        (2, "add_device"),
        (1, "signed_prekey_rotated"),
        (1, "prekeys_uploaded"),
        (1, "prekey_claimed"),
        (1, "claim_without_prekey"),
        (2, "remove_device"),
        (2, "identity_key_retired"),
    ]
    requester = {"requester_user": bob.user, "requester_device": 1}
    assert events[3]["detail"] == {
        "prekeys": 1,
        "pq_prekeys": 1,
        "prekey_ids": [1],
        "pq_prekey_ids": [3],
        "pq_last_resort_id": 9,
    }
    assert events[4]["detail"] == {
        "signed_prekey_id": 7,
        "prekey_id": 1,
        "pq_prekey_id": 3,
        "pq_last_resort": False,
        **requester,
    }
    assert events[5]["detail"]["reason"] == "none left"
    assert events[5]["detail"]["requester_user"] == bob.user
    for e in events:
        assert started - 5_000 <= e["at_ms"] <= now_ms() + 5_000, e
        assert e["at"].endswith("Z")

    store_args, env = _store_args(relay)
    text = await arun_relay(["audit", alice.user, *store_args], env)
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"user {alice.user}: 8 key events"
    assert [line.split()[3] for line in lines[1:]] == [e["kind"] for e in events]
    assert lines[5].split()[1:3] == ["device", "1"]
    assert "prekey_id=1" in lines[5].split() and f"requester_user={bob.user}" in lines[5]
    assert "reason=none_left" in lines[6].split()

    # --since: milliseconds or ISO 8601, inclusive.
    cut = events[6]["at_ms"]
    since_ms = await _audit(relay, alice.user, "--since", str(cut))
    assert [e["kind"] for e in since_ms["events"]][-2:] == ["remove_device", "identity_key_retired"]
    assert all(e["at_ms"] >= cut for e in since_ms["events"])
    since_iso = await _audit(relay, alice.user, "--since", events[6]["at"])
    assert since_iso["events"] == since_ms["events"]
    later = await _audit(relay, alice.user, "--since", "2999-01-01T00:00:00+00:00")
    assert later["events"] == []
    for device in (alice, phone, bob):
        await device.close()


async def test_audit_of_an_unknown_user_or_a_bad_since(relay):
    store_args, env = _store_args(relay)
    unknown = await arun_relay(["audit", str(uuid.uuid4()), *store_args], env)
    assert unknown.code == 1 and "no user" in unknown.stderr, unknown
    alice = await new_user(relay.url)
    for bad in ("yesterday", "2026-13-01", "-5"):
        result = await arun_relay(["audit", alice.user, "--since", bad, *store_args], env)
        assert result.code == 2, (bad, result)
        assert result.stdout == ""
        assert result.stderr.startswith("relay: --since must be an ISO 8601 time"), result.stderr
    bad_user = await arun_relay(["audit", "not-a-uuid", *store_args], env)
    assert bad_user.code == 2 and "USER must be a UUID" in bad_user.stderr
    await alice.close()


async def test_relay_purge_deletes_key_events_past_the_retention(relay_factory):
    r = relay_factory(purge_interval=3600)
    alice = await new_user(r.url)
    await link_device(alice)
    store_args, env = _store_args(r)
    kept = await arun_relay(["purge", *store_args], env)  # the default retention: 90 days
    assert kept.code == 0, kept.stderr
    assert " and 0 key events older than audit_retention (90 days)" in kept.stdout, kept
    assert len((await _audit(r, alice.user))["events"]) == 2
    # Every event is older than a millisecond by the time the command runs.
    purged = await arun_relay(["purge", "--audit-retention", "0.001", *store_args], env)
    assert purged.code == 0, purged.stderr
    assert " and 2 key events older than audit_retention" in purged.stdout, purged
    assert (await _audit(r, alice.user))["events"] == []
    await alice.close()


async def test_the_running_relay_purges_key_events_past_the_retention(relay_factory):
    r = relay_factory(audit_retention=5, purge_interval=0.2)
    alice = await new_user(r.url)
    assert [e["kind"] for e in (await _audit(r, alice.user))["events"]] == ["register"]

    async def purged() -> bool:
        return (await _audit(r, alice.user))["events"] == []

    await wait_until(purged, 30, "the relay's purge task to delete the event past 5 s")
    await alice.close()


def test_audit_retention_from_default_env_file_and_refused_when_not_positive(tmp_path):
    def shown(args: list[str], env: dict[str, str]) -> dict:
        result = run_relay(["config", "show", "--format", "json", *args], env=env)
        assert result.code == 0, result.stderr
        return orjson.loads(result.stdout)["settings"]["audit_retention"]

    assert shown([], {}) == {"value": 90 * 86400.0, "source": "default"}
    by_env = shown([], {"RELAY_AUDIT_RETENTION": "3600"})
    assert by_env == {"value": 3600.0, "source": "env RELAY_AUDIT_RETENTION"}
    config = tmp_path / "relay.toml"
    config.write_text("audit_retention = 86400\n")
    by_file = shown(["--config", str(config)], {})
    assert by_file == {"value": 86400.0, "source": f"file {config}:audit_retention"}
    assert shown(["--audit-retention", "60"], {})["source"] == "flag --audit-retention"
    refused = run_relay(["purge", "--audit-retention", "0", "--data-dir", str(tmp_path)])
    assert refused.code == 2
    assert "audit_retention must be greater than 0" in refused.stderr, refused.stderr
