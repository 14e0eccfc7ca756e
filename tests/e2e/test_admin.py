"""Issue 7, item 7: the admin commands `relay stats`, `relay devices USER`, `relay purge`;
the stats' node list as a table and any spelling of a user's UUID."""

from __future__ import annotations

import re
import socket
import uuid

import orjson
import pytest

from protocol.signatures import KeyScheme

from .commands import arun_relay, run_relay
from .stores import StoreProvisioner
from .support import RelayProcess, link_device, new_user, offline_user, stop_relays, wait_until


def _store_args(relay) -> tuple[list[str], dict[str, str]]:
    """The flags and environment that point an admin command at this relay's store."""
    return ["--data-dir", str(relay.data_dir)], dict(relay.extra_env)


async def test_stats_reads_a_running_node(relay):
    alice = await new_user(relay.url)
    base = f"http://127.0.0.1:{relay.port}"
    table = await arun_relay(["stats", "--url", base])
    assert table.code == 0, table.stderr
    rows = {}
    for line in table.stdout.splitlines():
        name, _, value = line.partition("  ")
        rows[name] = value.strip()
    assert float(rows["uptime_s"]) > 0
    assert int(rows["authenticated"]) >= 1
    raw = await arun_relay(["stats", "--url", base + "/v1/stats", "--json"])
    assert raw.code == 0, raw.stderr
    stats = orjson.loads(raw.stdout)
    assert stats["store"].startswith(("embedded", "postgresql"))
    assert stats["authenticated"] >= 1
    assert "[{" not in table.stdout, "the node list is a table, not raw JSON"
    nodes = _node_rows(table.stdout)
    assert [row[0] for row in nodes] == [stats["node_id"]]
    assert nodes[0][-2:] == ["this", "node"]
    await alice.close()


def _node_rows(text: str) -> list[list[str]]:
    """The rows of the node table after its `nodes (N)` title and its header."""
    lines = text.splitlines()
    title = next(i for i, line in enumerate(lines) if re.fullmatch(r"nodes \(\d+\)", line))
    assert lines[title + 1].split()[:2] == ["node", "connections"], lines[title + 1]
    rows = [line.split() for line in lines[title + 2 :]]
    assert len(rows) == int(lines[title][len("nodes (") : -1])
    return rows


async def test_stats_lists_every_node_in_a_table(tmp_path):
    """Two nodes sharing PostgreSQL and Redis: each one's stats list both, one row each."""
    provisioner = StoreProvisioner("production")
    env = provisioner.new_store_env()
    nodes = [RelayProcess(tmp_path / name, {"node_id": name}, env=env) for name in ("a", "b")]
    try:
        for node in nodes:
            node.start()
        alice = await new_user(nodes[1].url)
        base = f"http://127.0.0.1:{nodes[0].port}"

        async def both_listed() -> list[list[str]] | None:
            result = await arun_relay(["stats", "--url", base])
            assert result.code == 0, result.stderr
            rows = _node_rows(result.stdout)
            return rows if [row[0] for row in rows] == ["a", "b"] and rows[1][1] == "1" else None

        rows = await wait_until(both_listed, 30, "node a's stats to list node b with 1 device")
        assert rows[0][-2:] == ["this", "node"]
        assert "this" not in rows[1]
        assert float(rows[1][2]) >= 0  # heartbeat age of the other node, in seconds
        await alice.close()
    finally:
        problems = stop_relays(nodes)
        provisioner.cleanup()
    assert not problems, problems


def test_stats_of_an_unreachable_node_fails_clearly():
    with socket.socket() as sock:  # a port that nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_relay(["stats", "--url", f"http://127.0.0.1:{port}", "--timeout", "5"])
    assert result.code == 1
    assert "cannot reach a relay at" in result.stderr and str(port) in result.stderr
    assert result.stdout == ""


async def test_devices_lists_a_users_devices(relay):
    first = await new_user(relay.url, scheme=KeyScheme.XEDDSA, registration_id=4242)
    second = await link_device(first, scheme=KeyScheme.ED25519)
    args, env = _store_args(relay)
    table = await arun_relay(["devices", first.user, *args], env)
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"user {first.user}: 2 active devices"
    assert lines[1].split()[:2] == ["device", "key"]
    assert len(lines) == 4
    assert lines[2].split()[:3] == ["1", "xeddsa", "4242"]
    assert lines[3].split()[:2] == ["2", "ed25519"]

    raw = await arun_relay(["devices", first.user, "--json", *args], env)
    assert raw.code == 0, raw.stderr
    listed = orjson.loads(raw.stdout)
    assert listed["user"] == first.user
    assert [(d["device"], d["key_scheme"]) for d in listed["devices"]] == [
        (1, "xeddsa"),
        (2, "ed25519"),
    ]
    for d in listed["devices"]:
        assert d["created"].endswith("Z") and d["last_seen"].endswith("Z")
    await first.close()
    await second.close()


async def test_devices_of_an_unknown_or_malformed_user(relay):
    args, env = _store_args(relay)
    unknown = await arun_relay(["devices", str(uuid.uuid4()), *args], env)
    assert unknown.code == 1
    assert "no user" in unknown.stderr
    upper = await arun_relay(["devices", unknown_id := str(uuid.uuid4()).upper(), *args], env)
    assert upper.code == 1
    assert f"no user {unknown_id.lower()}" in upper.stderr
    for bad_id in (
        "not-a-uuid",
        "0x" + "a" * 30,
        "a" * 31 + "_",
        "{" + str(uuid.uuid4()),
        "9" * 10_000,
    ):
        bad = await arun_relay(["devices", bad_id, *args], env)
        assert bad.code == 2, bad_id
        assert bad.stdout == ""
        assert bad.stderr.count("\n") == 1, bad.stderr  # one line
        assert bad.stderr.startswith("relay: USER must be a UUID such as "), bad.stderr
        assert bad_id in bad.stderr or "10000 characters" in bad.stderr


async def test_devices_takes_any_spelling_of_a_uuid(relay):
    """Upper case, no dashes, braces or a urn:uuid: prefix: the canonical id in the answer."""
    alice = await new_user(relay.url)
    args, env = _store_args(relay)
    spellings = (
        alice.user.upper(),
        alice.user.replace("-", ""),
        "{" + alice.user.upper() + "}",
        f"urn:uuid:{alice.user}",
    )
    for spelling in spellings:
        result = await arun_relay(["devices", spelling, *args], env)
        assert result.code == 0, (spelling, result.stderr)
        assert result.stdout.splitlines()[0] == f"user {alice.user}: 1 active device"
    raw = await arun_relay(["devices", alice.user.upper(), "--json", *args], env)
    assert raw.code == 0, raw.stderr
    assert orjson.loads(raw.stdout)["user"] == alice.user
    await alice.close()


def test_admin_commands_on_a_missing_embedded_store(tmp_path):
    for command in (["devices", str(uuid.uuid4())], ["audit", str(uuid.uuid4())], ["purge"]):
        result = run_relay([*command, "--data-dir", str(tmp_path / "nothing")])
        assert result.code == 1, command
        assert "no embedded store" in result.stderr
    assert not (tmp_path / "nothing").exists(), "an admin command must not create a store"


async def test_purge_deletes_expired_messages(relay_factory):
    r = relay_factory(retention=0.3, purge_interval=3600)
    sender = await new_user(r.url)
    bob = await offline_user(r.url)
    answer = await sender.send_message(bob[0].user, [1])
    assert answer["t"] == "ok" and answer["stored"] == [1], answer
    args, env = _store_args(r)

    async def purged_one() -> bool:
        result = await arun_relay(["purge", *args], env)
        assert result.code == 0, result.stderr
        return result.stdout.startswith("purged 1 expired messages")

    await wait_until(purged_one, 30, "the stored message to expire and be purged")
    again = await arun_relay(["purge", *args], env)
    assert again.stdout.startswith("purged 0 expired messages"), again.stdout
    await sender.close()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["purge"], "Delete the expired stored messages"),
        (["stats"], "--url"),
        (["devices"], "USER"),
        (["audit"], "--since"),
        (["migrate"], "--database-url"),
        (["docs"], "TOPIC"),
        (["config", "show"], "--format"),
        (["serve"], "--log-format"),
        ([], "COMMAND"),
    ],
)
def test_every_command_has_help(command, expected):
    result = run_relay([*command, "--help"])
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("usage: relay")
    assert expected in result.stdout
    if command and command[0] in ("purge", "devices", "audit", "serve", "migrate"):
        assert "--config FILE" in result.stdout
