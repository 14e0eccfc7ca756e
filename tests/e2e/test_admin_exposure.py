"""The rule of docs/security.md, "Admin surface": no HTTP endpoint returns a user id, a key,
a message id, a nonce or a body, whether the admin token is presented or not.

A relay on each store gets users with two devices, signed, one-time and PQ pre-keys, live and
stored messages; then every path is read, with and without the token, and its bytes are
scanned for each of those values in every form it could take: raw, hex (either case), dashed
UUID, base64 and base64url (padded or not). Device numbers (1..127) only mean something next
to their user's id, so the scan for user ids covers the (user, device) address.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any

import orjson

from .admin_http import HEALTH_PATHS, OPERATIONS_PATHS, admin_base, aget, bearer
from .stores import StoreProvisioner
from .support import (
    Device,
    link_device,
    new_user,
    offline_user,
    pq_prekey,
    prekey,
    signed_prekey,
)

TOKEN = "scan-" + secrets.token_hex(16)
SCANNED_PATHS = (*OPERATIONS_PATHS, *HEALTH_PATHS, "/v1/history?since=0", "/no-such-path")


def byte_forms(value: bytes) -> set[bytes]:
    """`value` as it could appear in a response."""
    b64 = base64.b64encode(value)
    url = base64.urlsafe_b64encode(value)
    return {value, value.hex().encode(), b64, b64.rstrip(b"="), url, url.rstrip(b"=")}


def user_forms(user: str) -> set[bytes]:
    parsed = uuid.UUID(user)
    return {str(parsed).encode(), parsed.hex.encode()} | byte_forms(parsed.bytes)


def found_in(body: bytes, forms: set[bytes]) -> list[bytes]:
    """The forms present in `body`; hex and UUID text in any case."""
    lowered = body.lower()
    return [form for form in forms if form in body or form.lower() in lowered]


async def populated(url: str) -> tuple[list[Device], dict[str, set[bytes]]]:
    """Users, devices, keys and messages on the relay; each secret's forms by a name."""
    owner = await new_user(url)
    second = await link_device(owner)
    peer = await new_user(url, auto_ack=True)
    (offline,) = await offline_user(url)
    secrets_by_name: dict[str, set[bytes]] = {}
    for device in (owner, second, peer, offline):
        assert device.user is not None
        secrets_by_name[f"user {device.user}"] = user_forms(device.user)
        secrets_by_name[f"identity key of {device.address}"] = byte_forms(
            device.identity.public_key
        )
    uploads = {
        "signed_prekey": signed_prekey(owner.identity, 1),
        "prekeys": [prekey(i) for i in range(1, 4)],
        "pq_prekeys": [pq_prekey(owner.identity, i) for i in range(1, 3)],
    }
    assert (await owner.upload(**uploads))["t"] == "ok"
    keys = [uploads["signed_prekey"], *uploads["prekeys"], *uploads["pq_prekeys"]]
    for n, key in enumerate(keys):
        secrets_by_name[f"pre-key {n}"] = byte_forms(key["key"])
        if "signature" in key:
            secrets_by_name[f"pre-key signature {n}"] = byte_forms(key["signature"])
    for n, (recipient, online) in enumerate(((peer, True), (offline, False))):
        message_id, nonce, body = (secrets.token_bytes(16), secrets.token_bytes(24),
                                   secrets.token_bytes(40))  # fmt: skip
        answer = await owner.send_message(recipient, id=message_id, nonce=nonce, body=body)
        assert answer["t"] == "ok", answer
        secrets_by_name |= {
            f"message id {n}": byte_forms(message_id),
            f"nonce {n}": byte_forms(nonce),
            f"body {n}": byte_forms(body),
        }
        if online:
            assert (await peer.next_push("deliver"))["body"] == body
    return [owner, second, peer], secrets_by_name


async def test_no_endpoint_returns_user_ids_keys_or_bodies(
    relay_factory: Any, stores: StoreProvisioner
) -> None:
    relay = relay_factory(admin_listen="127.0.0.1:0", env={"RELAY_ADMIN_TOKEN": TOKEN})
    admin = admin_base(relay)
    connected, secrets_by_name = await populated(relay.url)
    try:
        stats = orjson.loads((await aget(admin + "/v1/stats", authorization=bearer(TOKEN))).body)
        assert stats["authenticated"] == len(connected)  # the scan reads a relay with state
        assert stats["messages"]["stored"] >= 1
        answers = {}
        for base in (admin, relay.http_url("")):
            for path in SCANNED_PATHS:
                for authorization in (None, bearer(TOKEN)):
                    answer = await aget(base + path, authorization=authorization)
                    answers[(base, path, authorization is not None)] = answer.body
    finally:
        for device in connected:
            await device.close()
    assert answers[(admin, "/metrics", True)].startswith(b"# HELP")
    leaks = [
        f"{where}: {name} as {form!r}"
        for where, body in answers.items()
        for name, forms in secrets_by_name.items()
        for form in found_in(body, forms)
    ]
    assert not leaks, "\n".join(leaks)
    for body in answers.values():  # nor where the store lives
        assert str(relay.data_dir).encode() not in body
        assert b"postgresql://" not in body and b"redis://" not in body
