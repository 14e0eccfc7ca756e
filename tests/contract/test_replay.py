"""ReplayGuard contract: one nonce per scope, pending then completed, lossless retries (§4)."""

from __future__ import annotations

import asyncio
import os

from storage.interfaces import Store
from storage.records import ReplayRecord, ReplayScope, SendOutcome

from .support import Backend, new_user

TTL = 30.0
WINDOW = 7 * 86_400.0
OUTCOME = SendOutcome(delivered=(1, 3), stored=(2,))
WAIT_LIMIT = 10.0  # a test that hangs fails after this, instead of at the suite timeout


def scope() -> ReplayScope:
    return ReplayScope(sender_user=new_user(), sender_device=1, recipient_user=new_user())


async def test_claim_then_complete(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.lookup(s, nonce) is None
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    assert await store.replay.lookup(s, nonce) == ReplayRecord(mid, None)
    await store.replay.complete(s, nonce, mid, OUTCOME, window_s=WINDOW)
    done = ReplayRecord(mid, OUTCOME)
    assert await store.replay.lookup(s, nonce) == done
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) == done
    assert await store.replay.claim(s, nonce, os.urandom(16), pending_ttl_s=TTL) == done


async def test_a_pending_claim_holds_the_nonce(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    held = ReplayRecord(mid, None)
    assert await store.replay.claim(s, nonce, os.urandom(16), pending_ttl_s=TTL) == held
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) == held


async def test_scopes_are_independent(store: Store) -> None:
    s, nonce = scope(), os.urandom(24)
    assert await store.replay.claim(s, nonce, os.urandom(16), pending_ttl_s=TTL) is None
    others = [
        ReplayScope(s.sender_user, 2, s.recipient_user),
        ReplayScope(s.sender_user, 1, new_user()),
        ReplayScope(new_user(), 1, s.recipient_user),
    ]
    for other in others:
        assert await store.replay.claim(other, nonce, os.urandom(16), pending_ttl_s=TTL) is None
    assert await store.replay.claim(s, os.urandom(24), os.urandom(16), pending_ttl_s=TTL) is None


async def test_release_frees_the_nonce_only_for_its_holder(store: Store) -> None:
    s, nonce, mid, other = scope(), os.urandom(24), os.urandom(16), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    await store.replay.release(s, nonce, other)  # not the holder: no effect
    assert await store.replay.lookup(s, nonce) == ReplayRecord(mid, None)
    await store.replay.release(s, nonce, mid)
    assert await store.replay.lookup(s, nonce) is None
    assert await store.replay.claim(s, nonce, other, pending_ttl_s=TTL) is None


async def test_the_first_answer_is_kept(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    await store.replay.complete(s, nonce, mid, OUTCOME, window_s=WINDOW)
    await store.replay.complete(s, nonce, mid, SendOutcome((), (1, 2, 3)), window_s=WINDOW)
    assert await store.replay.lookup(s, nonce) == ReplayRecord(mid, OUTCOME)


async def test_concurrent_claims_have_one_winner(store: Store) -> None:
    s, nonce = scope(), os.urandom(24)
    ids = [os.urandom(16) for _ in range(50)]
    results = await asyncio.gather(
        *(store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) for mid in ids)
    )
    winners = [mid for mid, result in zip(ids, results, strict=True) if result is None]
    assert len(winners) == 1
    assert all(r == ReplayRecord(winners[0], None) for r in results if r is not None)


async def test_a_claim_racing_a_quick_completion_never_gets_the_nonce(store: Store) -> None:
    """Every contender checks before the winner's claim is set; the winner completes at once.
    No loser may find the nonce free in the gap between pending and completed."""
    s, nonce = scope(), os.urandom(24)

    async def claim_and_complete(mid: bytes) -> ReplayRecord | None:
        held = await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL)
        if held is None:
            await store.replay.complete(s, nonce, mid, SendOutcome((), (1,)), window_s=WINDOW)
        return held

    ids = [os.urandom(16) for _ in range(20)]
    results = await asyncio.gather(*(claim_and_complete(mid) for mid in ids))
    winners = [mid for mid, held in zip(ids, results, strict=True) if held is None]
    assert len(winners) == 1
    assert all(held is not None and held.message_id == winners[0] for held in results if held)
    assert await store.replay.lookup(s, nonce) == ReplayRecord(winners[0], SendOutcome((), (1,)))


async def test_wait_outcome_wakes_on_complete(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    waiter = asyncio.create_task(store.replay.wait_outcome(s, nonce, timeout_s=60.0))
    assert await store.replay.lookup(s, nonce) == ReplayRecord(mid, None)  # the waiter ran
    assert not waiter.done()
    await store.replay.complete(s, nonce, mid, OUTCOME, window_s=WINDOW)
    # Woken by the completion, long before its own 60 s timeout.
    assert await asyncio.wait_for(waiter, WAIT_LIMIT) == ReplayRecord(mid, OUTCOME)


async def test_wait_outcome_wakes_on_release(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    waiter = asyncio.create_task(store.replay.wait_outcome(s, nonce, timeout_s=60.0))
    assert await store.replay.lookup(s, nonce) == ReplayRecord(mid, None)
    assert not waiter.done()
    await store.replay.release(s, nonce, mid)
    assert await asyncio.wait_for(waiter, WAIT_LIMIT) is None


async def test_wait_outcome_times_out_with_the_pending_record(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    result = await asyncio.wait_for(store.replay.wait_outcome(s, nonce, timeout_s=0.05), WAIT_LIMIT)
    assert result == ReplayRecord(mid, None)


async def test_wait_outcome_without_a_pending_claim_answers_at_once(store: Store) -> None:
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await asyncio.wait_for(store.replay.wait_outcome(s, nonce, timeout_s=60.0), 5) is None
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    await store.replay.complete(s, nonce, mid, OUTCOME, window_s=WINDOW)
    result = await asyncio.wait_for(store.replay.wait_outcome(s, nonce, timeout_s=60.0), WAIT_LIMIT)
    assert result == ReplayRecord(mid, OUTCOME)


async def test_a_pending_claim_expires(backend: Backend, store: Store) -> None:
    s, nonce, mid, other = scope(), os.urandom(24), os.urandom(16), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    backend.clock.advance(TTL - 1)
    assert await store.replay.claim(s, nonce, other, pending_ttl_s=TTL) == ReplayRecord(mid, None)
    backend.clock.advance(1)
    assert await store.replay.lookup(s, nonce) is None
    assert await store.replay.claim(s, nonce, other, pending_ttl_s=TTL) is None


async def test_a_completed_record_lasts_the_window(backend: Backend, store: Store) -> None:
    s, nonce, mid, other = scope(), os.urandom(24), os.urandom(16), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    await store.replay.complete(s, nonce, mid, OUTCOME, window_s=WINDOW)
    backend.clock.advance(WINDOW - 1)
    assert await store.replay.lookup(s, nonce) == ReplayRecord(mid, OUTCOME)
    backend.clock.advance(1)
    assert await store.replay.lookup(s, nonce) is None
    assert await store.replay.claim(s, nonce, other, pending_ttl_s=TTL) is None
    # A new outcome replaces the expired one.
    await store.replay.complete(s, nonce, other, SendOutcome((2,), ()), window_s=WINDOW)
    assert await store.replay.lookup(s, nonce) == ReplayRecord(other, SendOutcome((2,), ()))


async def test_completed_records_survive_reopen_and_pending_claims_do_not(
    backend: Backend, store: Store
) -> None:
    done_scope, done_nonce, done_id = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(done_scope, done_nonce, done_id, pending_ttl_s=TTL) is None
    await store.replay.complete(done_scope, done_nonce, done_id, OUTCOME, window_s=WINDOW)
    s, nonce, mid = scope(), os.urandom(24), os.urandom(16)
    assert await store.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
    await store.close()

    reopened = await backend.open()
    assert await reopened.replay.lookup(done_scope, done_nonce) == ReplayRecord(done_id, OUTCOME)
    assert await reopened.replay.claim(
        done_scope, done_nonce, os.urandom(16), pending_ttl_s=TTL
    ) == ReplayRecord(done_id, OUTCOME)
    if backend.pending_claims_survive_restart:
        # Shared by nodes: the claim holds until its holder finishes or its TTL runs out.
        assert await reopened.replay.lookup(s, nonce) == ReplayRecord(mid, None)
    else:
        # The in-flight send died with the process: its retry may claim the nonce again.
        assert await reopened.replay.lookup(s, nonce) is None
        assert await reopened.replay.claim(s, nonce, mid, pending_ttl_s=TTL) is None
