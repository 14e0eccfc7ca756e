"""A store whose keys of encryption at rest could not be loaded at start (its backend was
down): every call answers Unavailable until the keys load, then works as if they had been
there from the start, the first call of each kind included (the calls of the hot path take
a path of their own while the keys are missing: storage/at_rest/blinded.py)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest

from storage.at_rest.blinded import BlindedStore, KeyAccess
from storage.at_rest.vault import DataKeyVault
from storage.errors import Unavailable
from storage.records import ReplayScope, SendOutcome

from .support import START_MS, Backend, envelope, make_user, seal_from_now

NONCE = b"\x07" * 24
MESSAGE_ID = b"\x01" * 16
OUTCOME = SendOutcome(delivered=(), stored=(1,))

Call = Callable[[BlindedStore, str, ReplayScope], Awaitable[object]]

FIRST_CALLS: dict[str, Call] = {
    "fetch": lambda s, user, _: s.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS),
    "pending_origins": lambda s, user, _: s.messages.pending_origins(user, [1], MESSAGE_ID),
    "lookup": lambda s, _, scope: s.replay.lookup(scope, NONCE),
    "claim": lambda s, _, scope: s.replay.claim(scope, NONCE, MESSAGE_ID, pending_ttl_s=30),
    "wait_outcome": lambda s, _, scope: s.replay.wait_outcome(scope, NONCE, timeout_s=1),
}


class _Opener:
    """Fails like a backend that is down until `up` is set, then gives the vault."""

    def __init__(self, vault: DataKeyVault) -> None:
        self.vault = vault
        self.up = False

    async def __call__(self) -> DataKeyVault:
        if not self.up:
            raise Unavailable("the store does not answer")
        return self.vault


async def _open(backend: Backend) -> tuple[BlindedStore, _Opener]:
    """A store whose vault is open, holding one stored message and one completed send; and
    an opener of the same vault for the views made later."""
    inner = await backend.open()
    vault, _ = await seal_from_now(inner, backend)
    opener = _Opener(vault)
    return BlindedStore(inner, KeyAccess(opener, vault)), opener


def _later(loaded: BlindedStore, opener: _Opener, backend: Backend) -> BlindedStore:
    """The same store seen by a node that started while its keys could not be loaded."""
    return BlindedStore(loaded.inner, KeyAccess(opener, monotonic=backend.clock.monotonic))


@pytest.mark.parametrize("kind", sorted(FIRST_CALLS))
async def test_the_first_call_after_the_keys_load_answers_as_with_keys_from_the_start(
    backend: Backend, kind: str
) -> None:
    loaded, opener = await _open(backend)
    user = await make_user(loaded)
    scope = ReplayScope("00000000-0000-4000-8000-000000000001", 1, user)
    await loaded.messages.store([envelope(user, 1, id=MESSAGE_ID, nonce=NONCE)])
    assert await loaded.replay.claim(scope, NONCE, MESSAGE_ID, pending_ttl_s=30) is None
    await loaded.replay.complete(scope, NONCE, MESSAGE_ID, OUTCOME, window_s=3600)
    expected = await FIRST_CALLS[kind](loaded, user, scope)

    later = _later(loaded, opener, backend)
    with pytest.raises(Unavailable):
        await FIRST_CALLS[kind](later, user, scope)
    opener.up = True
    backend.clock.advance(KeyAccess.RETRY_S)
    assert await FIRST_CALLS[kind](later, user, scope) == expected


async def test_writes_made_first_after_the_keys_load_are_kept_sealed_and_readable(
    backend: Backend,
) -> None:
    loaded, opener = await _open(backend)
    user = await make_user(loaded)
    scope = ReplayScope("00000000-0000-4000-8000-000000000001", 1, user)
    opener.up = True

    claimed = _later(loaded, opener, backend)
    assert await claimed.replay.claim(scope, NONCE, MESSAGE_ID, pending_ttl_s=30) is None
    completed = _later(loaded, opener, backend)
    await completed.replay.complete(scope, NONCE, MESSAGE_ID, OUTCOME, window_s=3600)
    record = await loaded.replay.lookup(scope, NONCE)
    assert record is not None and record.outcome == OUTCOME

    other = os.urandom(24)
    assert await loaded.replay.claim(scope, other, b"\x02" * 16, pending_ttl_s=30) is None
    await _later(loaded, opener, backend).replay.release(scope, other, b"\x02" * 16)
    assert await loaded.replay.lookup(scope, other) is None

    await loaded.messages.store([envelope(user, 1, id=MESSAGE_ID, nonce=NONCE)])
    acked = _later(loaded, opener, backend)
    assert await acked.messages.ack(user, 1, [MESSAGE_ID]) == []
    assert await loaded.messages.fetch(user, 1, after_seq=0, limit=10, now_ms=START_MS) == []
