"""TLS on the relay's port: wss:// and https:// with a throwaway CA, refusals, SIGHUP reload.

TLS sits below the store, so these relays use the embedded store only.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake

from protocol.client import tls_context

from .certs import Authority, ServerFiles, serial_of
from .commands import run_relay
from .support import Device, RelayProcess, is_canonical_uuid, stop_relays, wait_until

WAIT = 15.0


@dataclass
class Pki:
    ca: Authority
    server: ServerFiles
    directory: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "tls"
    ca = Authority(directory, "first")
    server = ca.issue(directory / "cert.pem", directory / "key.pem")
    return Pki(ca, server, directory)


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    problems = stop_relays(started)
    assert not problems, problems


@pytest.fixture
def tls_relay(tmp_path: Path, pki: Pki, relays: list[RelayProcess]) -> RelayProcess:
    relay = RelayProcess(
        tmp_path / "relay", {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    )
    relays.append(relay)
    return relay.start()


def _trusting(*authorities: Authority) -> ssl.SSLContext:
    context = tls_context(authorities[0].ca_file)
    for authority in authorities[1:]:
        context.load_verify_locations(authority.ca_file)
    return context


def _ssl_object(ws: ClientConnection) -> ssl.SSLObject:
    ssl_object = ws.transport.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject)
    return ssl_object


async def _served_serial(url: str, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection is shown."""
    async with connect(url, ssl=context, open_timeout=WAIT) as ws:
        der = _ssl_object(ws).getpeercert(binary_form=True)
        assert der is not None
        return serial_of(der)


async def _tls_device(relay: RelayProcess, context: ssl.SSLContext) -> Device:
    device = Device(relay.url)
    device.connect_kwargs = {"ssl": context}
    await device.register()
    return device


def _https_get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=WAIT, context=context) as resp:
        return resp.status, resp.read()


async def test_wss_register_authenticate_and_send(tls_relay: RelayProcess, pki: Pki) -> None:
    assert tls_relay.url.startswith("wss://127.0.0.1:")
    context = tls_context(pki.ca.ca_file)
    alice = await _tls_device(tls_relay, context)
    bob = await _tls_device(tls_relay, context)
    assert is_canonical_uuid(alice.user) and is_canonical_uuid(bob.user)
    assert alice.ws is not None
    assert _ssl_object(alice.ws).version() in ("TLSv1.2", "TLSv1.3")
    answer = await alice.reconnect()  # a new TLS connection, then the auth handshake
    assert answer["t"] == "ok", answer
    assert (await alice.send_message(bob, body=b"over tls"))["t"] == "ok"
    delivered = await bob.next_push("deliver")
    assert delivered["from"] == alice.user and delivered["body"] == b"over tls"
    await alice.close()
    await bob.close()


async def test_https_serves_the_operations_endpoints(tls_relay: RelayProcess, pki: Pki) -> None:
    context = tls_context(pki.ca.ca_file)
    status, body = await asyncio.to_thread(_https_get, tls_relay.http_url("/healthz"), context)
    assert (status, body) == (200, b"ok\n")
    status, body = await asyncio.to_thread(_https_get, tls_relay.http_url("/metrics"), context)
    assert status == 200 and b"relay_connections" in body
    plain = tls_relay.http_url("/healthz").replace("https://", "http://")
    with pytest.raises((OSError, http.client.HTTPException)):
        await asyncio.to_thread(urllib.request.urlopen, plain, timeout=WAIT)


async def test_plain_and_unverified_clients_are_refused(tls_relay: RelayProcess) -> None:
    plain_url = tls_relay.url.replace("wss://", "ws://")
    with pytest.raises((InvalidHandshake, OSError, EOFError)):
        async with connect(plain_url, open_timeout=WAIT):
            pass
    # The default context trusts the system's CAs, not the test's: verification fails.
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(tls_relay.url, open_timeout=WAIT):
            pass
    assert tls_relay.running()


async def test_sighup_serves_a_new_certificate_and_keeps_open_connections(
    tls_relay: RelayProcess, pki: Pki
) -> None:
    second = Authority(pki.directory, "renewed")
    both = _trusting(pki.ca, second)
    open_device = await _tls_device(tls_relay, both)
    assert open_device.ws is not None
    assert serial_of(_ssl_object(open_device.ws).getpeercert(True) or b"") == pki.server.serial

    renewed = second.issue(pki.server.cert, pki.server.key)
    assert renewed.serial != pki.server.serial
    os.kill(tls_relay.pid, signal.SIGHUP)

    async def serves_renewed() -> bool:
        return await _served_serial(tls_relay.url, both) == renewed.serial

    await wait_until(serves_renewed, timeout=WAIT, what="the renewed certificate served")
    # A client that trusts only the first CA cannot verify the relay any more.
    with pytest.raises(ssl.SSLCertVerificationError):
        await _served_serial(tls_relay.url, tls_context(pki.ca.ca_file))
    # The connection opened before the reload is still open and still works.
    assert not open_device.is_closed
    assert (await open_device.sync())["t"] == "ok"
    assert "TLS certificate reloaded" in tls_relay.stderr_tail(200)
    await open_device.close()


@pytest.mark.parametrize("damage", ["cert-not-pem", "key-of-another-cert"])
async def test_failed_reload_keeps_the_previous_certificate(
    tls_relay: RelayProcess, pki: Pki, damage: str
) -> None:
    if damage == "cert-not-pem":
        pki.server.cert.write_text("not a certificate\n")
    else:
        other = pki.ca.issue(pki.directory / "other-cert.pem", pki.directory / "other-key.pem")
        pki.server.key.write_bytes(other.key.read_bytes())
    os.kill(tls_relay.pid, signal.SIGHUP)

    async def reload_failed() -> bool:
        return "TLS certificate reload failed" in tls_relay.stderr_tail(200)

    await wait_until(reload_failed, timeout=WAIT, what="the failed reload logged")
    context = tls_context(pki.ca.ca_file)
    assert await _served_serial(tls_relay.url, context) == pki.server.serial
    device = await _tls_device(tls_relay, context)
    assert (await device.sync())["t"] == "ok"
    await device.close()
    assert tls_relay.running()


@pytest.mark.parametrize("where", ["env", "toml"])
async def test_tls_settings_from_environment_and_file(
    tmp_path: Path, pki: Pki, relays: list[RelayProcess], where: str
) -> None:
    if where == "env":
        env = {"RELAY_TLS_CERT": str(pki.server.cert), "RELAY_TLS_KEY": str(pki.server.key)}
        relay = RelayProcess(tmp_path / "relay", env=env)
    else:
        config = tmp_path / "relay.toml"
        config.write_text(f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n')
        relay = RelayProcess(tmp_path / "relay", {"config": config})
    relays.append(relay)
    await relay.astart()
    assert relay.url.startswith("wss://")
    assert await _served_serial(relay.url, tls_context(pki.ca.ca_file)) == pki.server.serial


def _bad_start_cases(pki: Pki) -> dict[str, tuple[list[str], str]]:
    other = pki.ca.issue(pki.directory / "other-cert.pem", pki.directory / "other-key.pem")
    not_pem = pki.directory / "not.pem"
    not_pem.write_text("hello\n")
    encrypted = pki.directory / "encrypted-key.pem"
    encrypted.write_bytes(
        serialization.load_pem_private_key(pki.server.key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cert, key = str(pki.server.cert), str(pki.server.key)
    return {
        "cert-alone": (
            ["--tls-cert", cert],
            "tls_cert and tls_key go together: set both to serve wss://, or neither "
            "(tls_cert from flag --tls-cert, tls_key from default)",
        ),
        "unreadable-cert": (
            ["--tls-cert", str(pki.directory / "absent.pem"), "--tls-key", key],
            "absent.pem: cannot read it: No such file or directory (tls_cert from flag --tls-cert)",
        ),
        "cert-not-pem": (
            ["--tls-cert", str(not_pem), "--tls-key", key],
            "not.pem: not a PEM certificate chain (tls_cert from flag --tls-cert)",
        ),
        "key-not-pem": (
            ["--tls-cert", cert, "--tls-key", str(not_pem)],
            "not.pem: not a PEM private key (tls_key from flag --tls-key)",
        ),
        "key-of-another-cert": (
            ["--tls-cert", cert, "--tls-key", str(other.key)],
            f"does not go with tls_cert {cert}: key values mismatch "
            "(tls_key from flag --tls-key, tls_cert from flag --tls-cert)",
        ),
        "key-encrypted": (
            ["--tls-cert", cert, "--tls-key", str(encrypted)],
            "encrypted-key.pem: the key is encrypted; the relay reads unencrypted keys only",
        ),
        "bad-proxy-network": (
            ["--trusted-proxies", "127.0.0.1,10.0.0.1/8"],
            "trusted_proxies: 10.0.0.1/8 has host bits set (from flag --trusted-proxies)",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cert-alone",
        "unreadable-cert",
        "cert-not-pem",
        "key-not-pem",
        "key-of-another-cert",
        "key-encrypted",
        "bad-proxy-network",
    ],
)
def test_bad_tls_settings_stop_serve_with_a_clear_message(
    tmp_path: Path, pki: Pki, case: str
) -> None:
    args, expected = _bad_start_cases(pki)[case]
    result = run_relay(
        ["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *args], timeout_s=20
    )
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("relay: bad setting: "), result.stderr
    assert expected in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stdout
