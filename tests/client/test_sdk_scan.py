"""The plaintext scanner can fail: a body sent unencrypted with the raw protocol is found."""

from __future__ import annotations

import base64
from pathlib import Path

from e2e.support import new_user, offline_user

from .conftest import StartRelay
from .scan import scan_relay
from .sdk import distinctive


async def test_the_scanner_finds_plaintext_that_was_sent_in_clear(
    relay_factory: StartRelay, tmp_path: Path
) -> None:
    # Without encryption at rest, so that the body lies in the store as sent.
    relay = relay_factory(at_rest_encryption=False)
    clear, encoded, never_sent = distinctive("clear"), distinctive("b64"), distinctive("never")
    (receiver,) = await offline_user(relay.url)
    sender = await new_user(relay.url)
    try:
        for body in (clear, base64.urlsafe_b64encode(b"xy" + encoded)):
            answer = await sender.send_message(receiver, body=body)
            assert answer["t"] == "ok" and answer["stored"] == [1], answer
    finally:
        await sender.close()

    findings, records = await scan_relay(relay, [clear, encoded, never_sent])
    assert records > 0
    found = {(f.plaintext, f.form.split("@")[0]) for f in findings}
    assert (clear, "raw") in found
    assert (encoded, "base64url") in found
    assert not any(f.plaintext == never_sent for f in findings)
    # Found in a row of the store itself, not only in the raw database files.
    assert any(f.plaintext == clear and not f.where.startswith("file") for f in findings)
