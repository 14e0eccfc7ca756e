"""Issue 7, item 5: structured logs, one line per connection open and close, no secrets."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from .support import Device, new_user, wait_until


def _log_text(relay: Any) -> str:
    return relay.stderr_tail(lines=100_000)


def _json_lines(relay: Any) -> list[dict[str, Any]]:
    records = []
    for line in _log_text(relay).splitlines():
        if line.startswith("{"):
            records.append(orjson.loads(line))
    return records


def _connection_lines(relay: Any, msg: str) -> list[dict[str, Any]]:
    return [r for r in _json_lines(relay) if r.get("msg") == msg]


async def _wait_for_close_line(relay: Any, user: str) -> dict[str, Any]:
    async def closed_line() -> dict[str, Any] | None:
        await relay.ahttp_get("/healthz")  # a round trip to the relay between two looks
        for record in _connection_lines(relay, "connection closed"):
            if record.get("user") == user:
                return record
        return None

    found: dict[str, Any] = await wait_until(closed_line, 10, f"the close line of {user}")
    return found


def _encodings(secret: bytes) -> set[str]:
    """The ways a byte string could show up in a log line."""
    return {
        secret.hex(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    }


async def test_json_logs_one_open_and_one_close_line_without_secrets(relay_factory):
    r = relay_factory(log_format="json", log_level="DEBUG")
    receiver = await new_user(r.url)
    await receiver.next_push("queue_empty")
    sender = Device(r.url)
    await sender.connect()
    assert sender.challenge is not None
    challenge = sender.challenge["nonce"]
    register = sender.register_frame()
    answer = await sender.request(register)
    assert answer["t"] == "ok", answer
    sender.user, sender.device = answer["user"], answer["device"]

    body = b"log-test body " + bytes(range(32))
    send = sender.send_frame(receiver, body=body)
    answer = await sender.request(send)
    assert answer["t"] == "ok", answer
    deliver = await receiver.next_push("deliver")
    assert deliver["body"] == body
    await receiver.ack(deliver["id"])
    await sender.close()

    closed = await _wait_for_close_line(r, sender.user)
    opened = [o for o in _connection_lines(r, "connection opened") if o["conn"] == closed["conn"]]
    assert len(opened) == 1, opened
    assert opened[0]["peer"] == closed["peer"]
    assert opened[0]["peer"].startswith("127.0.0.1:")
    assert closed["level"] == "INFO" and closed["logger"] == "relay.connection"
    assert closed["device"] == sender.device
    assert closed["code"] == 1000 and closed["by"] == "client"
    assert isinstance(closed["reason"], str)
    assert 0 <= closed["duration_s"] < 60
    assert isinstance(closed["ts"], str) and closed["ts"].endswith("Z")

    await receiver.close()
    await _wait_for_close_line(r, receiver.user)
    text = _log_text(r)
    secrets = {
        "challenge": challenge,
        "register signature": register["signature"],
        "identity key": register["identity_key"],
        "body": body,
        "message nonce": send["nonce"],
        "message id": send["id"],
    }
    for what, secret in secrets.items():
        for shown in _encodings(secret):
            assert shown not in text, f"the {what} appears in the log"


async def test_text_logs_name_the_server_close(relay_factory):
    """A connection that never authenticates: closed by the server, with its reason."""
    r = relay_factory(handshake_timeout=0.5)
    silent = Device(r.url)
    await silent.connect()
    assert await silent.closed_code() == 1008

    async def close_line() -> str | None:
        await r.ahttp_get("/healthz")
        for line in _log_text(r).splitlines():
            if "connection closed" in line and "code=1008" in line:
                return line
        return None

    line = await wait_until(close_line, 10, "the close line of the silent connection")
    assert " INFO relay.connection: connection closed " in line
    assert 'reason="handshake timeout"' in line and "by=server" in line
    assert "duration_s=" in line and "user=" not in line
    await silent.close()
