"""Encryption at rest, operated: a wrong or missing master key stops the relay before it
serves, with one line; an encrypted store is not opened without encryption; data keys and the
master key rotate while messages are being stored, and every stored message is delivered
intact and once afterwards (ledger)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
from pathlib import Path
from typing import Any

from .commands import Result, arun_relay
from .conftest import StartRelay
from .support import RelayProcess, new_user, offline_user, wait_until

WAIT = 30.0
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[0-9:.]+Z (DEBUG|INFO) ")


def _key_file(relay: RelayProcess) -> Path:
    """The master key file the relay reads: the one given, else the embedded store's own."""
    given = relay.extra_env.get("RELAY_MASTER_KEY_FILE")
    return Path(given) if given is not None else relay.data_dir / "master.key"


async def _serve_once(
    relay: RelayProcess, *extra: str, env: dict[str, str] | None = None
) -> Result:
    """`relay serve` as the relay was started, expected to exit by itself."""
    return await arun_relay(
        [*relay.argv()[3:], *extra], env=relay.extra_env if env is None else env
    )


def _one_line_refusal(result: Result, *words: str) -> None:
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    # The start-up log lines before it (a production node logs its schema check) aside,
    # the refusal is one line, and nothing else is said: no traceback.
    lines = [line for line in result.stderr.strip().splitlines() if not _LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("relay: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "serving on" not in result.stdout


async def _stopped_relay_with_a_user(relay_factory: StartRelay) -> RelayProcess:
    relay = relay_factory()
    device = await new_user(relay.url)
    await device.close()
    await relay.astop()
    return relay


async def test_a_wrong_master_key_stops_the_relay_before_it_serves(
    relay_factory: StartRelay,
) -> None:
    relay = await _stopped_relay_with_a_user(relay_factory)
    _key_file(relay).write_text(secrets.token_hex(32) + "\n")
    _one_line_refusal(await _serve_once(relay), "master key")


async def test_a_missing_master_key_stops_the_relay_before_it_serves(
    relay_factory: StartRelay,
) -> None:
    relay = await _stopped_relay_with_a_user(relay_factory)
    _key_file(relay).unlink()
    env = {k: v for k, v in relay.extra_env.items() if k != "RELAY_MASTER_KEY_FILE"}
    _one_line_refusal(await _serve_once(relay, env=env), "master")


async def test_an_encrypted_store_is_not_opened_without_encryption(
    relay_factory: StartRelay,
) -> None:
    relay = await _stopped_relay_with_a_user(relay_factory)
    _one_line_refusal(await _serve_once(relay, "--no-at-rest-encryption"), "encrypted at rest")


async def _keys(relay: RelayProcess, *args: str) -> Result:
    store_flags = ["--data-dir", str(relay.data_dir)]
    result = await arun_relay(["keys", *args, *store_flags], env=relay.extra_env)
    assert result.code == 0, (result.stdout, result.stderr)
    return result


async def _status(relay: RelayProcess) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((await _keys(relay, "status", "--json")).stdout)
    return status


async def test_data_and_master_keys_rotate_while_messages_are_stored(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    relay = relay_factory()
    receivers = await offline_user(relay.url, devices=2)
    sender = await new_user(relay.url)
    sent: dict[bytes, bytes] = {}  # id -> body, for every send answered ok
    stop = asyncio.Event()
    progress = asyncio.Condition()

    async def send_until_stopped() -> None:
        while not stop.is_set():
            message_id, body = secrets.token_bytes(16), secrets.token_bytes(48)
            answer = await sender.send_message(receivers[0], [1, 2], body=body, id=message_id)
            assert answer["t"] == "ok" and answer["stored"] == [1, 2], answer
            sent[message_id] = body
            async with progress:
                progress.notify_all()

    async def twenty_more_sent() -> None:
        wanted = len(sent) + 20
        async with asyncio.timeout(WAIT), progress:
            await progress.wait_for(lambda: len(sent) >= wanted or load.done())
        if load.done():
            await load  # its failure, if it failed

    load = asyncio.create_task(send_until_stopped())
    try:
        before = await _status(relay)
        first_data = [k["id"] for k in before["keys"] if k["purpose"] == "data"]
        assert len(first_data) == 1

        await twenty_more_sent()
        await _keys(relay, "rotate-data")
        os.kill(relay.pid, signal.SIGHUP)  # seal with the new key now, not at the next refresh
        await twenty_more_sent()

        new_key = tmp_path / "new-master.key"
        new_key.write_text(secrets.token_hex(32) + "\n")
        new_key.chmod(0o600)
        await _keys(relay, "rotate-master", "--new-key-file", str(new_key))
        _key_file(relay).write_text(new_key.read_text())
        os.kill(relay.pid, signal.SIGHUP)

        async def reloaded() -> bool:
            return "master key reloaded" in relay.stderr_tail(400)

        await wait_until(reloaded, timeout=WAIT, what="the new master key read by the relay")
        await twenty_more_sent()
    finally:
        stop.set()
        await load
        await sender.close()

    after = await _status(relay)
    assert after["master_key_id"] != before["master_key_id"]
    data_keys = {k["id"]: k for k in after["keys"] if k["purpose"] == "data"}
    assert len(data_keys) == 2 and first_data[0] in data_keys
    assert data_keys[first_data[0]]["state"] == "retired"
    # Both keys seal some of the stored messages (two rows a message, one per device).
    assert all(k["rows"] > 0 for k in data_keys.values()), data_keys
    assert sum(k["rows"] for k in data_keys.values()) == 2 * len(sent)

    # A restart reads the new key file; every message reaches each device intact, once.
    await relay.arestart()
    for device in receivers:
        device.url = relay.url
        await device.reconnect()
        delivered = await device.drain()
        await device.close()
        got = {d["id"]: d["body"] for d in delivered}
        assert len(got) == len(delivered), "a message delivered twice"
        assert got == sent
