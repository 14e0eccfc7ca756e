"""`GET /` and `GET /v1/history` of a real relay, on each store: the landing page names the
relay and links its operations paths without a secret; the history fills up every second
and answers `since`."""

from __future__ import annotations

import asyncio
import importlib.metadata
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.test_landing import parse

from .stores import StoreProvisioner
from .support import Device, RelayProcess, stop_relays, wait_until

NODE_ID = "landing-node-7"
TOKEN = "tok-" + secrets.token_hex(12)
DB_PASSWORD = "pw-" + secrets.token_hex(12)
OPERATIONS_PATHS = ("/dashboard", "/healthz", "/readyz", "/metrics", "/v1/stats")


def with_password(database_url: str) -> str:
    """The same database, its URL now carrying a password (the test server trusts anyway)."""
    scheme, rest = database_url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{DB_PASSWORD}@{host}"


@pytest.fixture
def relay(tmp_path: Path, stores: StoreProvisioner) -> Iterator[RelayProcess]:
    """A relay with a registration token and, on PostgreSQL, a password in its database URL:
    two secrets the pages must not show."""
    env = stores.new_store_env()
    if "RELAY_DATABASE_URL" in env:
        env["RELAY_DATABASE_URL"] = with_password(env["RELAY_DATABASE_URL"])
    env["RELAY_REGISTRATION_TOKEN"] = TOKEN
    process = RelayProcess(tmp_path / "relay", {"node_id": NODE_ID}, env=env)
    try:
        process.start()
        yield process
    finally:
        problems = stop_relays([process])
        assert not problems, problems


def head(relay: RelayProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(relay.http_url(path), method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


async def history(relay: RelayProcess, query: str = "") -> dict[str, Any]:
    status, headers, body = await relay.ahttp_get("/v1/history" + query)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    document: dict[str, Any] = orjson.loads(body)
    return document


async def registered_pair(relay: RelayProcess) -> tuple[Device, Device]:
    sender, receiver = Device(relay.url), Device(relay.url, auto_ack=True)
    for device in (sender, receiver):
        await device.register(token=TOKEN)
    return sender, receiver


async def test_the_landing_page_names_the_relay_without_secrets(
    relay: RelayProcess, stores: StoreProvisioner
) -> None:
    sender, receiver = await registered_pair(relay)
    try:
        answer = await sender.send_message(receiver)
        assert answer["t"] == "ok", answer
        status, headers, body = await relay.ahttp_get("/")
    finally:
        await sender.close()
        await receiver.close()
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    page = parse(body)
    assert page.by_id["version"] == importlib.metadata.version("relay")
    assert page.by_id["node"] == NODE_ID
    expected_store = "PostgreSQL + Redis" if stores.mode == "production" else "embedded (SQLite)"
    assert page.by_id["store"] == expected_store
    assert set(OPERATIONS_PATHS) | {"/v1/history"} <= set(page.links)
    text = body.decode("utf-8")
    for secret in (TOKEN, DB_PASSWORD, str(relay.data_dir), "postgresql://", "redis://"):
        assert secret not in text, secret
    for user_data in (sender.user, receiver.user):
        assert user_data is not None and user_data not in text

    # HEAD: the same headers, no body.
    head_status, head_headers, head_body = await asyncio.to_thread(head, relay, "/")
    assert (head_status, head_body) == (200, b"")
    assert head_headers["content-length"] == str(len(body))
    assert head_headers["content-type"] == "text/html; charset=utf-8"

    # Every linked path answers.
    for path in OPERATIONS_PATHS:
        linked_status, _, _ = await relay.ahttp_get(path)
        assert linked_status == 200, path


async def test_the_history_fills_every_second_and_answers_since(relay: RelayProcess) -> None:
    first = await history(relay)
    assert (first["node_id"], first["interval_s"], first["capacity"]) == (NODE_ID, 1.0, 900)

    sender, receiver = await registered_pair(relay)
    try:
        for _ in range(5):
            assert (await sender.send_message(receiver))["t"] == "ok"

        async def shows_the_sends() -> list[dict[str, Any]] | None:
            samples: list[dict[str, Any]] = (await history(relay))["samples"]
            moved = [s for s in samples if (s["messages_in"] or 0) > 0]
            return samples if len(samples) >= 3 and moved else None

        samples = await wait_until(shows_the_sends, 15, "samples showing the sends")
    finally:
        await sender.close()
        await receiver.close()

    times = [s["t_ms"] for s in samples]
    assert times == sorted(set(times))
    assert samples[0]["messages_in"] is None  # the relay's first sample has no rate yet
    assert all(s["messages_in"] is not None for s in samples[1:])
    assert max(s["authenticated"] for s in samples) >= 1
    assert sum(s["messages_in"] or 0 for s in samples) > 0
    for sample in samples:
        assert set(sample) == {
            "t_ms",
            "connections",
            "authenticated",
            "messages_in",
            "messages_out",
            "delivered",
            "stored",
            "errors",
            "latency_p50_ms",
            "latency_p99_ms",
            "queue",
            "loop_lag_ms",
        }

    newer = (await history(relay, f"?since={times[-2]}"))["samples"]
    assert newer and all(s["t_ms"] > times[-2] for s in newer)
    assert newer[0]["t_ms"] == times[-1]

    for query, message in (
        ("?since=yesterday", "whole number of milliseconds"),
        ("?since=1&since=2", "more than once"),
        ("?limit=5", "unknown parameter 'limit'"),
    ):
        status, headers, body = await relay.ahttp_get("/v1/history" + query)
        assert status == 400, query
        assert headers["content-type"] == "application/json"
        assert message in orjson.loads(body)["error"], body


async def test_metrics_writes_only_the_names_asked_for(relay: RelayProcess) -> None:
    everything = await relay.ahttp_get("/metrics")
    assert everything[0] == 200
    names = ("process_cpu_seconds_total", "relay_connections")
    status, headers, body = await relay.ahttp_get(
        "/metrics?" + "&".join(f"name[]={name}" for name in names)
    )
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    series = [line.split(" ", 1)[0] for line in body.decode().splitlines() if line[:1] != "#"]
    assert sorted(series) == sorted(names)
    assert len(everything[2].splitlines()) > 10 * len(body.splitlines())

    for query, message in (
        ("?name[]=relay%20connections", "is not a metric name"),
        ("?since=5", "unknown parameter 'since'"),
        ("?name[]", "malformed query string"),
    ):
        status, headers, answer = await relay.ahttp_get("/metrics" + query)
        assert status == 400, query
        assert headers["content-type"].startswith("text/plain")
        assert message in answer.decode(), answer
