"""Encryption at rest, seen from a copy of the database: after messages are stored for
offline devices and each sender saved a key backup, no sender's user id (as text, hex, raw
16 bytes or base64), no nonce, no body, no backup blob and no backup access key is anywhere
in it; the same run without encryption shows them (the scanner can fail);
and the stored messages still reach their recipients intact."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from e2e.commands import arun_relay
from e2e.support import Device, new_user, now_ms, offline_user

from .conftest import StartRelay
from .scan import Finding, scan_database
from .sdk import distinctive

SENDERS = 3
MESSAGES_EACH = 4
BACKUPS: dict[str, tuple[bytes, bytes]] = {}  # sender user -> (blob, access key), this run


def _user_forms(user: str) -> list[bytes]:
    """A user id as text (dashed), its 16 raw bytes and its 32 hex digits; the scanner adds
    hex and base64 of each."""
    parsed = uuid.UUID(user)
    return [user.encode(), parsed.bytes, parsed.hex.encode()]


async def _store_for_offline(
    relay_url: str,
) -> tuple[list[Device], list[Device], list[dict[str, Any]]]:
    receivers = await offline_user(relay_url, devices=2)
    senders = [await new_user(relay_url) for _ in range(SENDERS)]
    sent: list[dict[str, Any]] = []
    try:
        for sender in senders:
            for _ in range(MESSAGES_EACH):
                body, nonce = distinctive("body"), secrets.token_bytes(24)
                answer = await sender.send_message(receivers[0], [1, 2], body=body, nonce=nonce)
                assert answer["t"] == "ok" and answer["stored"] == [1, 2], answer
                sent.append({"sender": sender.user, "body": body, "nonce": nonce})
            blob, access_key = distinctive("backup blob"), secrets.token_bytes(32)
            saved = await sender.request(
                {"t": "backup.put", "version": 0, "blob": blob, "access_key": access_key}
            )
            assert saved["t"] == "ok", saved
            assert sender.user is not None
            BACKUPS[sender.user] = (blob, access_key)
    finally:
        for sender in senders:
            await sender.close()
    return receivers, senders, sent


def _secrets(senders: list[Device], sent: list[dict[str, Any]]) -> list[bytes]:
    found: list[bytes] = []
    for sender in senders:
        assert sender.user is not None
        found += _user_forms(sender.user)
        found += list(BACKUPS[sender.user])
    for message in sent:
        found += [message["body"], message["nonce"]]
    return found


async def test_a_copy_of_the_database_names_no_sender_and_shows_no_nonce_or_body(
    relay_factory: StartRelay,
) -> None:
    relay = relay_factory()
    receivers, senders, sent = await _store_for_offline(relay.url)

    findings, records = await scan_database(relay, _secrets(senders, sent))
    assert records > 0
    assert findings == [], _shown(findings)

    # Still there, intact, for each device.
    for device in receivers:
        await device.reconnect()
        delivered = await device.drain()
        await device.close()
        assert sorted(d["body"] for d in delivered) == sorted(m["body"] for m in sent)
        assert {d["from"] for d in delivered} == {s.user for s in senders}
        assert sorted(d["nonce"] for d in delivered) == sorted(m["nonce"] for m in sent)


async def test_without_encryption_at_rest_the_scanner_finds_senders_nonces_and_bodies(
    relay_factory: StartRelay,
) -> None:
    relay = relay_factory(at_rest_encryption=False)
    _, senders, sent = await _store_for_offline(relay.url)

    findings, _ = await scan_database(relay, _secrets(senders, sent))
    found = {f.plaintext for f in findings}
    for sender in senders:
        assert sender.user is not None
        assert sender.user.encode() in found
    assert all(m["body"] in found and m["nonce"] in found for m in sent)
    for sender in senders:
        assert sender.user is not None
        blob, access_key = BACKUPS[sender.user]
        assert blob in found and access_key in found


def _shown(findings: list[Finding]) -> str:
    return "\n".join(f"{f.where}: {f.plaintext!r} as {f.form}" for f in findings[:20])


async def test_a_store_run_without_encryption_is_converted_and_keeps_its_messages(
    relay_factory: StartRelay,
) -> None:
    relay = relay_factory(at_rest_encryption=False)
    receivers, senders, sent = await _store_for_offline(relay.url)
    await relay.astop()
    secrets_ = _secrets(senders, sent)
    assert (await scan_database(relay, secrets_))[0], "the clear store shows them"

    relay.options["at_rest_encryption"] = True
    url = relay.extra_env.get("RELAY_DATABASE_URL")
    if url is not None:
        # Production: converted by `relay migrate` only, never by a serving node.
        check = await arun_relay(["migrate", "--check"], env=relay.extra_env)
        assert check.code == 1 and "encryption at rest pending" in check.stdout, check
        refused = await arun_relay(relay.argv()[3:], env=relay.extra_env)
        assert refused.code == 2 and "run `relay migrate`" in refused.stderr, refused
        done = await arun_relay(["migrate"], env=relay.extra_env)
        assert done.code == 0, done
        assert f"{SENDERS + 1} users' ids hashed" in done.stdout, done.stdout
        assert f"{2 * len(sent)} stored messages sealed" in done.stdout, done.stdout
        assert (await arun_relay(["migrate", "--check"], env=relay.extra_env)).code == 0
    await relay.astart()  # the embedded store converts itself as it opens

    findings, _ = await scan_database(relay, secrets_)
    assert findings == [], _shown(findings)
    # The key backups come through the conversion intact.
    owner = senders[0]
    owner.url = relay.url
    await owner.reconnect()
    assert owner.user is not None
    got = await owner.request_ok({"t": "backup.get"})
    assert (got["user"], got["version"], got["blob"]) == (owner.user, 1, BACKUPS[owner.user][0])
    await owner.close()
    for device in receivers:
        device.url = relay.url
        await device.reconnect()
        delivered = await device.drain()
        await device.close()
        assert sorted(d["body"] for d in delivered) == sorted(m["body"] for m in sent)
        assert sorted(d["nonce"] for d in delivered) == sorted(m["nonce"] for m in sent)


async def test_a_group_messages_shared_payload_is_sealed_and_comes_back_whole(
    relay_factory: StartRelay,
) -> None:
    """`send.multi` with a shared payload for offline devices: the payload (stored once,
    apart from the rows) shows in a clear store and not in a sealed one, and each device
    gets its header followed by the payload."""
    for encrypted in (False, True):
        relay = relay_factory(at_rest_encryption=encrypted)
        receivers = await offline_user(relay.url, devices=2)
        sender = await new_user(relay.url)
        payload, nonce = distinctive("shared payload"), secrets.token_bytes(24)
        headers = {d.device: distinctive(f"header {d.device}") for d in receivers}
        answer = await sender.request(
            {
                "t": "send.multi",
                "id": secrets.token_bytes(16),
                "ts": now_ms(),
                "nonce": nonce,
                "payload": payload,
                "to": [
                    {
                        "user": receivers[0].user,
                        "devices": [
                            {"device": n, "type": 3, "body": h} for n, h in headers.items()
                        ],
                    }
                ],
            }
        )
        assert answer["t"] == "ok" and answer["users"][0]["stored"] == [1, 2], answer
        await sender.close()
        assert sender.user is not None
        secrets_ = [payload, nonce, *headers.values(), *_user_forms(sender.user)]
        findings, records = await scan_database(relay, secrets_)
        if encrypted:
            assert records > 0
            assert findings == [], _shown(findings)
        else:
            assert {payload, nonce} <= {f.plaintext for f in findings}
        for device in receivers:
            await device.reconnect()
            (delivered,) = await device.drain()
            await device.close()
            assert delivered["body"] == headers[device.device] + payload
