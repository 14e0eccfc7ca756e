"""Issue 17, item 6: `--admin-listen` takes the operations paths off the public port, and
`--admin-token` gates the operations data, on real relays and each store."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.client import tls_context

from .admin_http import (
    HEALTH_PATHS,
    OPERATIONS_PATHS,
    TOKEN_PATHS,
    admin_base,
    aget,
    bearer,
    public_base,
)
from .certs import Authority
from .commands import arun_relay, run_relay
from .support import Device, RelayProcess, stop_relays

TOKEN = "admin-" + secrets.token_hex(16)


async def test_the_admin_listener_takes_the_operations_paths_off_the_public_port(
    relay_factory: Any,
) -> None:
    relay = relay_factory(admin_listen="127.0.0.1:0")
    public, admin = public_base(relay), admin_base(relay)
    assert public != admin

    for path in OPERATIONS_PATHS:
        assert (await aget(public + path)).status == 404, path
        assert (await aget(admin + path)).status == 200, path
    for path in HEALTH_PATHS:  # load balancers probe the public port
        assert (await aget(public + path)).status == 200, path
        assert (await aget(admin + path)).status == 200, path
    assert (await aget(admin + "/v1/ws")).status == 404  # no WebSocket on the admin port
    assert (await aget(admin + "/nothing-here")).status == 404
    head = await aget(public + "/metrics", method="HEAD")
    assert (head.status, head.body) == (404, b"")

    # The WebSocket still works on the public port.
    sender, receiver = Device(relay.url), Device(relay.url, auto_ack=True)
    try:
        await sender.register()
        await receiver.register()
        assert (await sender.send_message(receiver, body=b"still here"))["t"] == "ok"
        assert (await receiver.next_push("deliver"))["body"] == b"still here"
        stats = orjson.loads((await aget(admin + "/v1/stats")).body)
        assert stats["authenticated"] == 2
    finally:
        await sender.close()
        await receiver.close()

    # `relay stats` reads the admin port; the public port no longer has the stats.
    table = await arun_relay(["stats", "--url", admin])
    assert table.code == 0, table.stderr
    assert "authenticated" in table.stdout
    refused = await arun_relay(["stats", "--url", public])
    assert refused.code == 1
    assert "answered HTTP 404" in refused.stderr
    assert await relay.astop() == 0  # both listeners close in a graceful shutdown


async def test_the_admin_token_gates_the_operations_data(relay_factory: Any) -> None:
    relay = relay_factory(env={"RELAY_ADMIN_TOKEN": TOKEN})
    base = public_base(relay)
    for path in TOKEN_PATHS:
        missing = await aget(base + path)
        assert missing.status == 401, path
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert (await aget(base + path, authorization=bearer(TOKEN[:-1] + "x"))).status == 401
        assert (await aget(base + path, authorization=f"Basic {TOKEN}")).status == 401
        assert (await aget(base + path, authorization=bearer(TOKEN))).status == 200, path
        assert (await aget(base + path, authorization=f"bearer {TOKEN}")).status == 200, path
    for path in ("/", "/dashboard", *HEALTH_PATHS):  # no data of their own
        assert (await aget(base + path)).status == 200, path
    head = await aget(base + "/v1/stats", method="HEAD")
    assert (head.status, head.body) == (401, b"")
    assert int(head.headers["content-length"]) > 0  # the GET answer's length

    without = await arun_relay(["stats", "--url", base])
    assert without.code == 1
    assert "RELAY_ADMIN_TOKEN" in without.stderr
    wrong = await arun_relay(["stats", "--url", base], env={"RELAY_ADMIN_TOKEN": "x" * 20})
    assert wrong.code == 1
    assert "refused" in wrong.stderr
    right = await arun_relay(["stats", "--url", base, "--json"], env={"RELAY_ADMIN_TOKEN": TOKEN})
    assert right.code == 0, right.stderr
    assert orjson.loads(right.stdout)["connections"] >= 0

    shown = await arun_relay(["config", "show"], env={"RELAY_ADMIN_TOKEN": TOKEN})
    assert shown.code == 0 and TOKEN not in shown.stdout
    assert 'admin_token = "***"' in shown.stdout


async def test_the_admin_listener_serves_https_with_the_relays_certificate(
    tmp_path: Path,
) -> None:
    ca = Authority(tmp_path / "tls", "admin")
    server = ca.issue(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    options = {"tls_cert": server.cert, "tls_key": server.key, "admin_listen": "127.0.0.1:0"}
    relay = RelayProcess(tmp_path / "relay", options)
    try:
        relay.start()
        admin = admin_base(relay)
        assert admin.startswith("https://")
        answer = await aget(admin + "/v1/stats", context=tls_context(ca.ca_file))
        assert answer.status == 200
        assert orjson.loads(answer.body)["store"] == "embedded"
    finally:
        assert not stop_relays([relay])


BAD_ADDRESSES = {
    "no port": ("localhost", "is not HOST:PORT"),
    "port out of range": ("127.0.0.1:70000", "not in 0..65535"),
    "port not a number": ("127.0.0.1:http", "is not a number"),
    "no host": (":9100", "is not HOST:PORT"),
    "IPv6 without brackets": ("::1:9100", "goes in brackets"),
    "unclosed bracket": ("[::1:9100", "is not [IPV6]:PORT"),
    "not IPv6 in brackets": ("[localhost]:9100", "is not an IPv6 address"),
    "spaces in host": ("local host:9100", "is not a name or an IP address"),
    "too long": ("a" * 400 + ":1", "longer than"),
    "not an address here": ("192.0.2.1:0", "cannot listen"),
    "unknown name": ("no-such-host.invalid:0", "cannot listen"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDRESSES))
def test_a_bad_admin_listen_value_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    value, reason = BAD_ADDRESSES[case]
    result = run_relay(
        ["serve", "--port", "0", "--data-dir", str(tmp_path / "d"), "--admin-listen", value]
    )
    assert result.code == 2, result
    problems = [line for line in result.stderr.splitlines() if line.startswith("relay:")]
    assert len(problems) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert problems[0].startswith("relay: bad setting: admin_listen")
    assert reason in problems[0]
    assert problems[0].endswith("(from flag --admin-listen)")
    assert not result.stdout


def test_an_admin_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_relay(
            ["serve", "--port", "0", "--data-dir", str(tmp_path / "d")],
            env={"RELAY_ADMIN_LISTEN": f"127.0.0.1:{port}"},
        )
    assert result.code == 2, result
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"relay: bad setting: admin_listen 127.0.0.1:{port}: cannot listen")
    assert last.endswith("(from env RELAY_ADMIN_LISTEN)")


@pytest.mark.parametrize("token", ["short", "sixteen chars ok", "x" * 257])
def test_a_bad_admin_token_exits_2_without_showing_it(tmp_path: Path, token: str) -> None:
    result = run_relay(
        ["serve", "--port", "0", "--data-dir", str(tmp_path / "d")],
        env={"RELAY_ADMIN_TOKEN": token},
    )
    assert result.code == 2, result
    assert result.stderr.startswith("relay: bad setting: admin_token must be")
    assert len(result.stderr.strip().splitlines()) == 1
    assert token not in result.stderr
