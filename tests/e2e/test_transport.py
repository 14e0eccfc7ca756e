"""Spec §1: transport, sub-protocols, frame encoding, request/answer rules, HTTP endpoints."""

from __future__ import annotations

import uuid

import msgpack
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .support import (
    JSON,
    MSGPACK,
    SPEC_ERROR_CODES,
    Device,
    error_of,
    new_user,
    now_ms,
)

PROTOS = ["msgpack", "json"]


# --------------------------------------------------------------------------- sub-protocols


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        ([MSGPACK], MSGPACK),
        ([JSON], JSON),
        ([MSGPACK, JSON], MSGPACK),
        ([JSON, MSGPACK], JSON),
        (["chat.v9", JSON], JSON),
        (["chat.v9", MSGPACK, JSON], MSGPACK),
    ],
)
async def test_first_preference_wins(relay, offer, expected):
    dev = Device(relay.url)
    challenge = await dev.connect(subprotocols=offer)
    assert dev.ws.subprotocol == expected
    assert challenge["t"] == "challenge"
    # The whole handshake and a request work in the chosen encoding.
    await dev.register()
    assert (await dev.sync())["t"] == "ok"
    assert not dev.violations
    await dev.close()


async def test_no_offer_means_msgpack(relay):
    async with connect(relay.url, max_size=None) as ws:
        assert ws.subprotocol is None
        message = await ws.recv()
        assert isinstance(message, bytes), "the default encoding is msgpack in binary frames"
        frame = msgpack.unpackb(message, raw=False)
        assert frame["t"] == "challenge"
        assert isinstance(frame["nonce"], bytes) and len(frame["nonce"]) == 32


async def test_no_offer_full_session(relay):
    dev = Device(relay.url)
    await dev.connect(subprotocols=None)
    assert dev.proto == MSGPACK
    await dev.register()
    assert (await dev.sync())["t"] == "ok"
    await dev.close()


@pytest.mark.parametrize("offer", [["chat.v9"], ["relay.v2+msgpack", "relay.v1+cbor"]])
async def test_only_unknown_subprotocols_refused_with_400(relay, offer):
    with pytest.raises(InvalidStatus) as info:
        async with connect(relay.url, subprotocols=offer):
            pass
    assert info.value.response.status_code == 400


async def test_json_uses_text_frames_and_base64url(relay):
    async with connect(relay.url, subprotocols=[JSON]) as ws:
        message = await ws.recv()
        assert isinstance(message, str), "JSON frames are text frames"
        frame = orjson.loads(message)
        assert frame["t"] == "challenge"
        nonce = frame["nonce"]
        assert isinstance(nonce, str)
        assert "=" not in nonce and "+" not in nonce and "/" not in nonce
        assert len(nonce) == 43  # 32 bytes, unpadded base64url
        assert isinstance(frame["server_time"], int)


async def test_msgpack_uses_binary_frames_and_bin(relay):
    async with connect(relay.url, subprotocols=[MSGPACK]) as ws:
        message = await ws.recv()
        assert isinstance(message, bytes)
        frame = msgpack.unpackb(message, raw=False)
        assert frame["t"] == "challenge"
        assert isinstance(frame["nonce"], bytes)


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("proto", PROTOS)
async def test_unknown_keys_are_ignored(relay, proto):
    a = await new_user(relay.url, proto=proto)
    b = await new_user(relay.url, proto=proto, auto_ack=True)
    answer = await a.request({"t": "keys.count", "zzz": 1, "nested": {"x": [1, 2]}})
    assert answer["t"] == "ok"
    answer = await a.send_message(b, extra={"x-extension": "whatever", "zz": [1]})
    assert answer["t"] == "ok", answer
    deliver = await b.next_push("deliver")
    assert deliver["id"] == answer["id"]
    for d in (a, b):
        await d.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_unknown_type(relay, proto):
    a = await new_user(relay.url, proto=proto)
    answer = await a.request({"t": "presence.subscribe"})
    error_of(answer, "unknown_type")
    # The connection stays usable.
    assert (await a.sync())["t"] == "ok"
    await a.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_bad_frame_with_usable_rid_is_answered_with_it(relay, proto):
    a = await new_user(relay.url, proto=proto)
    # Missing required key `user`.
    error_of(await a.request({"t": "keys.fetch"}), "bad_frame")
    # Mistyped required key.
    error_of(await a.request({"t": "devices.remove", "device": "one"}), "bad_frame")
    # Mistyped optional key is checked like a required one.
    error_of(await a.request({"t": "keys.fetch", "user": a.user, "device": "2"}), "bad_frame")
    error_of(
        await a.request(a.send_frame(a, [], online="yes")),  # type: ignore[arg-type]
        "bad_frame",
    )
    # A byte string of the wrong size.
    frame = a.send_frame(a, [])
    frame["id"] = b"\x01" * 15
    error_of(await a.request(frame), "bad_frame")
    frame = a.send_frame(a, [])
    frame["nonce"] = b"\x01" * 23
    error_of(await a.request(frame), "bad_frame")
    assert (await a.sync())["t"] == "ok"
    await a.close()


async def test_byte_fields_must_be_bin_not_str_in_msgpack(relay):
    a = await new_user(relay.url, proto="msgpack")
    frame = a.send_frame(a, [])
    frame["id"] = "0123456789abcdef"  # a 16-char *string*, not bin
    error_of(await a.request(frame), "bad_frame")
    await a.close()


async def test_user_must_be_canonical_lowercase_uuid(relay):
    a = await new_user(relay.url)
    upper = a.user.upper()
    error_of(await a.request({"t": "keys.fetch", "user": upper}), "bad_frame")
    error_of(await a.send_message(upper, []), "bad_frame")
    no_dashes = uuid.UUID(a.user).hex
    error_of(await a.request({"t": "keys.fetch", "user": no_dashes}), "bad_frame")
    braces = "{" + a.user + "}"
    error_of(await a.send_message(braces, []), "bad_frame")
    error_of(await a.send_message("not-a-uuid", []), "bad_frame")
    await a.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_frames_without_usable_rid_get_errors_without_rid(relay, proto):
    a = await new_user(relay.url, proto=proto)
    bad_frames: list[object] = [
        {"t": "keys.count", "rid": -1},
        {"t": "keys.count", "rid": 2**32},
        {"t": "keys.count", "rid": "seven"},
        {"t": "keys.count"},
        {"t": "keys.count", "rid": 1.5},
        {"t": "keys.count", "rid": True},
        [1, 2, 3],
        "just a string",
        42,
    ]
    for frame in bad_frames:
        await a.send_raw(frame)
        error = await a.next_push("error")
        assert error["code"] == "bad_frame", (frame, error)
        assert "rid" not in error, (frame, error)
    # Bytes that are no frame of the encoding at all.
    if proto == "msgpack":
        await a.send_raw(b"\xc1\xc1\xc1")
    else:
        await a.send_raw("{not json")
    error = await a.next_push("error")
    assert error["code"] == "bad_frame" and "rid" not in error
    assert (await a.sync())["t"] == "ok"
    await a.close()


async def test_bad_ack_gets_error_without_rid(relay):
    a = await new_user(relay.url)
    await a.send_raw({"t": "ack", "ids": "nope"})
    error = await a.next_push("error")
    assert error["code"] == "bad_frame" and "rid" not in error
    await a.send_raw({"t": "ack", "ids": [b"short"]})
    error = await a.next_push("error")
    assert error["code"] == "bad_frame" and "rid" not in error
    await a.send_raw({"t": "ack"})
    error = await a.next_push("error")
    assert error["code"] == "bad_frame" and "rid" not in error
    await a.close()


async def test_valid_ack_gets_no_answer(relay):
    a = await new_user(relay.url)
    await a.ack(b"\x07" * 16)  # unknown id: nothing to do, nothing said
    await a.send_raw({"t": "ack", "ids": []})
    sync = await a.sync()
    after_auth = a.received[a.received.index(a.auth_answer) + 1 :]
    assert [f for f in after_auth if f.get("t") != "queue_empty"] == [sync]
    await a.close()


async def test_ack_too_many_ids_is_too_large(relay):
    a = await new_user(relay.url)
    await a.send_raw({"t": "ack", "ids": [i.to_bytes(16, "big") for i in range(1001)]})
    error = await a.next_push("error")
    assert error["code"] == "too_large" and "rid" not in error
    # 1000 is allowed.
    await a.send_raw({"t": "ack", "ids": [i.to_bytes(16, "big") for i in range(1000)]})
    await a.sync()
    assert not a.buffered("error")
    await a.close()


async def test_answers_match_by_rid_when_pipelined(relay):
    a = await new_user(relay.url)
    frames = [{"t": "keys.count", "rid": 1000 + i} for i in range(50)]
    for f in frames:
        await a.send_raw(f)
    await a.sync()
    rids = sorted(f["rid"] for f in a.buffered("ok"))
    assert rids == [1000 + i for i in range(50)]
    await a.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_earlier_frames_take_effect_before_a_later_answer(relay, proto):
    """Once the answer to a request arrives, every frame sent earlier has taken effect."""
    a = await new_user(relay.url, proto=proto)
    keys = [{"id": i, "key": bytes([5]) + bytes([i]) * 32} for i in range(20)]
    await a.send_raw({"t": "keys.upload", "rid": 1, "prekeys": keys[:10]})
    await a.send_raw({"t": "keys.upload", "rid": 2, "prekeys": keys[10:]})
    count = await a.request({"t": "keys.count", "rid": 3})
    assert count["prekeys"] == 20, count
    await a.close()


async def test_rid_range_is_u32(relay):
    a = await new_user(relay.url)
    for rid in (0, 1, 2**32 - 1):
        answer = await a.request({"t": "keys.count", "rid": rid})
        assert answer["t"] == "ok" and answer["rid"] == rid
    await a.close()


async def test_body_above_limit_is_too_large(relay):
    a = await new_user(relay.url)
    b = await new_user(relay.url, auto_ack=True)
    answer = await a.send_message(b, body=b"\x00" * (262144 + 1))
    error_of(answer, "too_large")
    # Exactly at the limit is fine.
    answer = await a.send_message(b, body=b"\x00" * 262144)
    assert answer["t"] == "ok", answer
    deliver = await b.next_push("deliver")
    assert deliver["body"] == b"\x00" * 262144
    for d in (a, b):
        await d.close()


@pytest.mark.parametrize("proto", PROTOS)
async def test_frame_above_limit_closes_1009(relay, proto):
    a = await new_user(relay.url, proto=proto)
    await a.send_raw(a.send_frame(a, [1], body=b"\x00" * (1024 * 1024 + 10)))
    assert await a.closed_code() == 1009


async def test_empty_body_is_bad_frame(relay):
    a = await new_user(relay.url)
    b = await new_user(relay.url)
    error_of(await a.send_message(b, body=b""), "bad_frame")
    for d in (a, b):
        await d.close()


async def test_type_out_of_range_is_bad_frame(relay):
    a = await new_user(relay.url)
    b = await new_user(relay.url, auto_ack=True)
    error_of(await a.send_message(b, type_=256), "bad_frame")
    error_of(await a.send_message(b, type_=-1), "bad_frame")
    assert (await a.send_message(b, type_=255))["t"] == "ok"
    assert (await a.send_message(b, type_=0))["t"] == "ok"
    for d in (a, b):
        await d.close()


async def test_ts_must_be_integer(relay):
    a = await new_user(relay.url)
    b = await new_user(relay.url)
    frame = a.send_frame(b)
    frame["ts"] = float(now_ms())
    error_of(await a.request(frame), "bad_frame")
    for d in (a, b):
        await d.close()


# --------------------------------------------------------------------------- HTTP


async def test_healthz(relay):
    status, _, _ = await relay.ahttp_get("/healthz")
    assert status == 200


async def test_readyz(relay):
    status, _, _ = await relay.ahttp_get("/readyz")
    assert status == 200


async def test_metrics_prometheus_text(relay):
    # Some traffic first, so counters exist.
    a = await new_user(relay.url)
    await a.sync()
    await a.close()
    status, headers, body = await relay.ahttp_get("/metrics")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain")
    text = body.decode()
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert any(name.startswith("relay_") for name in families), families[:20]


async def test_stats_json(relay):
    status, headers, body = await relay.ahttp_get("/v1/stats")
    assert status == 200
    assert "json" in headers.get("content-type", "")
    assert isinstance(orjson.loads(body), dict)


async def test_dashboard(relay):
    status, headers, body = await relay.ahttp_get("/dashboard")
    assert status == 200
    assert "html" in headers.get("content-type", "")
    assert b"<html" in body.lower()


def test_spec_error_codes_known():
    assert "internal" in SPEC_ERROR_CODES and len(SPEC_ERROR_CODES) == 17
