"""The SDK and relay-chat over wss:// to a relay with a throwaway CA.

TLS sits below the store, so the relay uses the embedded store only.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.certs import Authority, relay_with_tls
from e2e.support import REPO_ROOT, RelayProcess

from protocol.client import Client, TlsSetupError, tls_context

from .sdk import FAST, PASSPHRASE, WAIT, Inbox, device, distinctive

USER_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "tls", "sdk")


@pytest.fixture
def tls_relay(tmp_path: Path, ca: Authority) -> Iterator[RelayProcess]:
    with relay_with_tls(tmp_path, ca) as relay:
        yield relay


async def test_sdk_clients_talk_over_wss(
    tls_relay: RelayProcess, ca: Authority, tmp_path: Path
) -> None:
    assert tls_relay.url.startswith("wss://")
    context = tls_context(ca.ca_file)
    bob_inbox = Inbox()
    async with (
        Client.open(
            tls_relay.url, tmp_path / "alice", PASSPHRASE, options=FAST, ssl=context
        ) as alice,
        Client.open(
            tls_relay.url,
            tmp_path / "bob",
            PASSPHRASE,
            options=FAST,
            ssl=context,
            on_message=bob_inbox.handler,
        ) as bob,
    ):
        await alice.register()
        bob_user = await bob.register()
        await asyncio.wait_for(alice.wait_connected(), WAIT)
        text = distinctive("over wss")
        await alice.send(bob_user, text)
        messages = await bob_inbox.wait_for(1)
        assert messages[0].plaintext == text
        assert messages[0].sender_user == alice.user


async def test_sdk_refuses_a_relay_it_cannot_verify(
    tls_relay: RelayProcess, tmp_path: Path
) -> None:
    # No context: the system's CAs, which do not include the test's CA.
    async with device(tls_relay.url, tmp_path / "store") as client:
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.register()
    with pytest.raises(TlsSetupError, match="for wss:// URLs"):
        async with Client.open(
            tls_relay.url.replace("wss://", "ws://"),
            tmp_path / "other",
            PASSPHRASE,
            options=FAST,
            ssl=ssl.create_default_context(),
        ):
            pass


def test_tls_context_names_a_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match=r"absent\.pem: cannot read it"):
        tls_context(tmp_path / "absent.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    with pytest.raises(TlsSetupError, match=r"empty\.pem: no PEM certificate in it"):
        tls_context(empty)


def _relay_chat(
    relay: RelayProcess, store: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "protocol.chat", "--url", relay.url, "--store", str(store), *args],
        cwd=REPO_ROOT,
        env={**base, "RELAY_CHAT_PASSPHRASE": "over tls", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
    )


async def test_relay_chat_over_wss_with_a_ca_file(
    tls_relay: RelayProcess, ca: Authority, tmp_path: Path
) -> None:
    store = tmp_path / "chat-store"
    done = await asyncio.to_thread(
        _relay_chat, tls_relay, store, "--ca-file", str(ca.ca_file), "register"
    )
    assert done.returncode == 0, done.stderr
    registered = USER_ID.search(done.stdout)
    assert registered, done.stdout
    # The same CA from the environment; the store is now registered, whoami names its user.
    done = await asyncio.to_thread(
        _relay_chat, tls_relay, store, "whoami", RELAY_CA_FILE=str(ca.ca_file)
    )
    assert done.returncode == 0, done.stderr
    assert registered.group(0) in done.stdout
    # Without the CA file the relay cannot be verified: a one-line error, no traceback.
    done = await asyncio.to_thread(_relay_chat, tls_relay, tmp_path / "other", "register")
    assert done.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr and "Traceback" not in done.stderr
