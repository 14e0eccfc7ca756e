"""Fuzzing the live relay: random and mutated frames never crash it or leak `internal`.

Seeded `random.Random`, so every run sends the same frames and a failure names
the frame that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import uuid
from typing import Any

import msgpack
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from .support import (
    JSON,
    SPEC_ERROR_CODES,
    Device,
    encode,
    new_user,
    now_ms,
)

ALLOWED_CODES = SPEC_ERROR_CODES - {"internal"}
SERVER_FRAME_TYPES = {"ok", "error", "deliver", "queue_empty", "keys.low"}
TYPES = [
    "register",
    "auth",
    "send",
    "ack",
    "keys.upload",
    "keys.fetch",
    "keys.count",
    "devices.list",
    "devices.remove",
]
KEYS = [
    "t",
    "rid",
    "id",
    "ids",
    "to",
    "ts",
    "nonce",
    "online",
    "devices",
    "device",
    "registration_id",
    "type",
    "body",
    "user",
    "identity_key",
    "key_scheme",
    "signature",
    "token",
    "link",
    "signed_prekey",
    "prekeys",
    "pq_prekeys",
    "pq_last_resort",
    "key",
]
FUZZ_FRAMES = 600
SYNC_RID_BASE = 4_000_000_000


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 1:
        return rng.choice([0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53, 127, 128, 255, 256])
    if kind == 2:
        return rng.random() * rng.choice([1, 1e9, -1e20])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(40)))
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 15, 16, 17, 23, 24, 25, 32, 33, 64, 65, 300]))
    if kind == 6:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == 7:
        return rng.choice([*TYPES, "", "ok", "error", "deliver", "x" * 300])
    if kind == 8:
        return "\u00e9\u4e2d\U0001f600" * rng.randrange(5)
    if kind == 9:
        return rng.randint(0, 2**32 - 1)
    if kind == 10:
        return rng.randbytes(rng.randrange(3000))
    return rng.choice(["ed25519", "xeddsa", "rsa", ""])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    if depth < 3 and rng.random() < 0.25:
        if rng.random() < 0.5:
            return [random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
        return {
            rng.choice([*KEYS, "zz"]): random_value(rng, depth + 1) for _ in range(rng.randrange(5))
        }
    return random_scalar(rng)


def random_frame(rng: random.Random) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": rng.choice(TYPES)}
    if rng.random() < 0.8:
        frame["rid"] = rng.randint(0, 2**32 - 1) if rng.random() < 0.9 else random_scalar(rng)
    for _ in range(rng.randrange(7)):
        frame[rng.choice(KEYS)] = random_value(rng)
    return frame


def valid_frames(dev: Device, rng: random.Random) -> list[dict[str, Any]]:
    """Well-formed frames of every kind, as seeds for mutation."""
    ident = dev.identity
    key = b"\x05" + rng.randbytes(32)
    pq = b"\x08" + rng.randbytes(1568)
    rid = rng.randint(0, 2**32 - 1)
    return [
        {
            "t": "send",
            "rid": rid,
            "id": rng.randbytes(16),
            "to": dev.user,
            "ts": now_ms(),
            "nonce": rng.randbytes(24),
            "devices": [],
        },
        {
            "t": "send",
            "rid": rid,
            "id": rng.randbytes(16),
            "to": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "ts": now_ms(),
            "nonce": rng.randbytes(24),
            "online": rng.random() < 0.5,
            "devices": [
                {"device": 1, "type": 2, "body": rng.randbytes(40), "registration_id": 5},
                {"device": 2, "type": 1, "body": rng.randbytes(10)},
            ],
        },
        {"t": "ack", "ids": [rng.randbytes(16) for _ in range(rng.randrange(4))]},
        {
            "t": "keys.upload",
            "rid": rid,
            "signed_prekey": {"id": rng.randrange(2**32), "key": key, "signature": ident.sign(key)},
            "prekeys": [
                {"id": rng.randrange(2**32), "key": b"\x05" + rng.randbytes(32)} for _ in range(3)
            ],
            "pq_prekeys": [{"id": rng.randrange(2**32), "key": pq, "signature": ident.sign(pq)}],
            "pq_last_resort": {"id": 7, "key": pq, "signature": ident.sign(pq)},
        },
        {"t": "keys.fetch", "rid": rid, "user": dev.user},
        {"t": "keys.fetch", "rid": rid, "user": dev.user, "device": 1},
        {"t": "keys.count", "rid": rid},
        {"t": "devices.list", "rid": rid},
        {"t": "devices.remove", "rid": rid, "device": rng.randint(2, 127)},
        {
            "t": "register",
            "rid": rid,
            "identity_key": key[1:],
            "key_scheme": "ed25519",
            "signature": rng.randbytes(64),
        },
        {
            "t": "auth",
            "rid": rid,
            "user": dev.user,
            "device": dev.device,
            "signature": rng.randbytes(64),
        },
    ]


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """One random change somewhere inside a frame."""
    if isinstance(value, dict) and value and (depth == 0 or rng.random() < 0.7):
        value = dict(value)
        key = rng.choice(list(value))
        op = rng.randrange(5)
        if op == 0:
            del value[key]
        elif op == 1:
            value[key] = random_value(rng)
        elif op == 2:
            value[rng.choice([*KEYS, "extra"])] = random_value(rng)
        else:
            value[key] = mutate(value[key], rng, depth + 1)
        return value
    if isinstance(value, list) and value:
        value = list(value)
        i = rng.randrange(len(value))
        op = rng.randrange(4)
        if op == 0:
            del value[i]
        elif op == 1:
            value.append(value[i])  # duplicates (a device named twice)
        else:
            value[i] = mutate(value[i], rng, depth + 1)
        return value
    if isinstance(value, bytes) and value:
        op = rng.randrange(3)
        if op == 0:
            return value[: rng.randrange(len(value))]
        if op == 1:
            return value + rng.randbytes(rng.randrange(1, 4))
        b = bytearray(value)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if isinstance(value, int) and not isinstance(value, bool):
        return rng.choice([value + 1, value - 1, -value, value + 2**32, str(value), float(value)])
    if isinstance(value, str):
        return rng.choice([value.upper(), value[:-1], value + "x", value.encode(), ""])
    return random_value(rng)


def fuzz_message(dev: Device, rng: random.Random) -> bytes | str:
    """The next fuzz WebSocket message: a random frame, a mutated one, or mangled bytes."""
    kind = rng.randrange(10)
    if kind < 3:
        frame: Any = random_frame(rng)
    elif kind < 8:
        frame = rng.choice(valid_frames(dev, rng))
        for _ in range(rng.randrange(1, 4)):
            frame = mutate(frame, rng)
    else:
        data = encode(rng.choice(valid_frames(dev, rng)), dev.proto)
        raw = data.encode() if isinstance(data, str) else data
        raw = bytearray(raw)
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(3)
            if op == 0 and raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            elif op == 1 and raw:
                del raw[rng.randrange(len(raw)) :]
            else:
                raw.insert(rng.randrange(len(raw) + 1), rng.randrange(256))
        if dev.proto == JSON:
            if rng.random() < 0.2:
                return bytes(raw)  # a binary frame on the JSON sub-protocol
            return raw.decode("utf-8", errors="replace")
        if rng.random() < 0.1:
            return raw.decode("latin-1")  # a text frame on the msgpack sub-protocol
        return bytes(raw)
    # Never remove the fuzzing device itself: that would (rightly) close it.
    if isinstance(frame, dict) and frame.get("t") == "devices.remove":
        frame["device"] = frame.get("device") if frame.get("device") != dev.device else 99
    try:
        return encode(frame, dev.proto)
    except (TypeError, OverflowError, ValueError, orjson.JSONEncodeError):
        return msgpack.packb([1, 2, 3]) if dev.proto != JSON else "[1,2,3]"


def check_server_frames(frames: list[dict[str, Any]], sent: Any) -> None:
    for f in frames:
        t = f.get("t")
        assert t in SERVER_FRAME_TYPES, f"unexpected frame {f!r} after {sent!r:.300}"
        if t == "error":
            assert f.get("code") in ALLOWED_CODES, f"error {f!r} after {sent!r:.300}"
            assert isinstance(f.get("message"), str), f


async def exchange(a: Device, b: Device, n: int, tag: bytes) -> None:
    """a and b send each other n messages; every one arrives intact and is acknowledged."""
    for i in range(n):
        for src, dst in ((a, b), (b, a)):
            body = tag + b":" + str(i).encode() + b":" + bytes(range(256))
            answer = await src.send_message(dst, body=body)
            assert answer["t"] == "ok", answer
            assert answer["delivered"] == [1] and answer["stored"] == [], answer
            got = await dst.next_push("deliver", pred=lambda f, mid=answer["id"]: f["id"] == mid)
            assert got["body"] == body
            assert got["from"] == src.user


@pytest.mark.parametrize(("proto", "seed"), [("msgpack", 1), ("json", 2), ("msgpack", 3)])
async def test_fuzz_authenticated_connection(relay_factory, proto, seed):
    r = relay_factory(max_bad_frames=100000, rate_requests=100000, rate_requests_burst=100000)
    rng = random.Random(seed)
    fuzzer = await new_user(r.url, proto=proto)
    await fuzzer.next_push("queue_empty")
    peer_a = await new_user(r.url, proto=proto, auto_ack=True)
    peer_b = await new_user(r.url, auto_ack=True)
    # The peers talk while the fuzzer runs.
    chatter = asyncio.create_task(exchange(peer_a, peer_b, 40, b"during"))
    sync_rid = SYNC_RID_BASE
    for n in range(FUZZ_FRAMES):
        message = fuzz_message(fuzzer, rng)
        if len(message) > 900_000:
            continue
        seen = len(fuzzer.received)
        try:
            await fuzzer.ws.send(message)
        except ConnectionClosed:
            pytest.fail(f"closed ({fuzzer.close_code}) after frame {n}: {message!r:.300}")
        sync_rid += 1
        try:
            answer = await fuzzer.request({"t": "keys.count", "rid": sync_rid})
        except Exception as exc:
            pytest.fail(
                f"no sync answer after frame {n} ({exc!r}); close={fuzzer.close_code}: "
                f"{message!r:.300}\n{r.stderr_tail()}"
            )
        assert answer["t"] == "ok", (answer, message)
        check_server_frames(fuzzer.received[seen:], message)
        assert r.running(), f"relay died after frame {n}: {message!r:.300}\n{r.stderr_tail()}"
    await asyncio.wait_for(chatter, 60)
    # Afterwards: the fuzzed connection still works, and so does everyone else.
    assert (await fuzzer.sync())["t"] == "ok"
    await exchange(peer_a, peer_b, 10, b"after")
    late = await new_user(r.url, proto=proto, auto_ack=True)
    await exchange(late, peer_a, 5, b"late")
    assert not fuzzer.violations and not peer_a.violations and not peer_b.violations
    for d in (fuzzer, peer_a, peer_b, late):
        await d.close()
    status, _, _ = await r.ahttp_get("/healthz")
    assert status == 200


@pytest.mark.parametrize("proto", ["msgpack", "json"])
async def test_fuzz_before_handshake(relay_factory, proto):
    r = relay_factory()
    rng = random.Random(7)
    for n in range(80):
        dev = Device(r.url, proto=proto)
        await dev.connect()
        dev.user, dev.device = str(uuid.uuid4()), 1
        message = fuzz_message(dev, rng)
        with contextlib.suppress(ConnectionClosed):
            await dev.ws.send(message)
        code = await dev.closed_code(timeout=15)
        frames = dev.received[1:]
        check_server_frames(frames, message)
        errors = [f for f in frames if f["t"] == "error"]
        assert len(errors) == 1, (n, frames, message)
        assert code == 1008, (n, code, message)
    healthy = await new_user(r.url, proto=proto)
    assert (await healthy.sync())["t"] == "ok"
    await healthy.close()
