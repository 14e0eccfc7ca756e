"""KeyAudit contract: the same actions leave the same key events in every store (kinds and
details; ids and times are the store's), readable per user and since a time, and purged by
age. Details carry key ids, counts and requesters only."""

from __future__ import annotations

from pathlib import Path

from storage.interfaces import Store
from storage.records import KeyUpload, Requester

from .support import START_MS, Backend, make_user, new_device
from .test_keys import ec, pq, signed

Event = tuple[int, str, dict[str, object]]


async def scripted(store: Store, requester: Requester) -> str:
    """Register, link, upload, claim until none left, rotate, remove: the user's id."""
    user = await make_user(store, devices=2)
    await store.keys.upload(
        user,
        1,
        KeyUpload(
            signed_prekey=signed(1),
            prekeys=(ec(1), ec(2)),
            pq_prekeys=(pq(5),),
            pq_last_resort=pq(9),
        ),
        now_ms=START_MS,
        max_stored=100,
    )
    for _ in range(3):  # ec 1 with pq 5, ec 2 with the last resort, then none left
        await store.keys.claim(user, 1, low_water=0, requester=requester)
    await store.keys.claim(user, 1, low_water=0, one_time=False, requester=requester)
    await store.keys.claim(user, 2, low_water=0, requester=requester)  # no bundle: no event
    await store.keys.upload(
        user, 1, KeyUpload(signed_prekey=signed(2)), now_ms=START_MS, max_stored=100
    )
    assert await store.devices.remove_device(user, 2)
    return user


def expected(requester: Requester) -> list[Event]:
    by = {"requester_user": requester.user, "requester_device": requester.device}
    return [
        (1, "register", {}),
        (2, "add_device", {}),
        (1, "signed_prekey_rotated", {"key_id": 1}),
        (
            1,
            "prekeys_uploaded",
            {
                "prekeys": 2,
                "pq_prekeys": 1,
                "prekey_ids": [1, 2],
                "pq_prekey_ids": [5],
                "pq_last_resort_id": 9,
            },
        ),
        (
            1,
            "prekey_claimed",
            {
                "signed_prekey_id": 1,
                "prekey_id": 1,
                "pq_prekey_id": 5,
                "pq_last_resort": False,
                **by,
            },
        ),
        (
            1,
            "prekey_claimed",
            {
                "signed_prekey_id": 1,
                "prekey_id": 2,
                "pq_prekey_id": None,
                "pq_last_resort": True,
                **by,
            },
        ),
        (
            1,
            "claim_without_prekey",
            {
                "signed_prekey_id": 1,
                "pq_prekey_id": None,
                "pq_last_resort": True,
                "reason": "none left",
                **by,
            },
        ),
        (
            1,
            "claim_without_prekey",
            {
                "signed_prekey_id": 1,
                "pq_prekey_id": None,
                "pq_last_resort": True,
                "reason": "withheld",
                **by,
            },
        ),
        (1, "signed_prekey_rotated", {"key_id": 2}),
        (2, "remove_device", {}),
        (2, "identity_key_retired", {}),
    ]


async def sequence(store: Store, user: str, since_ms: int | None = None) -> list[Event]:
    return [(e.device, e.kind, e.detail) for e in await store.audit.events(user, since_ms=since_ms)]


async def test_scripted_actions_leave_the_expected_events(store: Store, backend: Backend) -> None:
    requester = Requester(await make_user(store), 3)
    user = await scripted(store, requester)
    events = await store.audit.events(user)
    assert [(e.device, e.kind, e.detail) for e in events] == expected(requester)
    assert {e.user for e in events} == {user}
    assert all(e.at_ms == backend.clock.now_ms() for e in events)
    assert [e.id for e in events] == sorted({e.id for e in events})
    # The requester's own trail holds its registration only: a claim is the target's event.
    assert await sequence(store, requester.user) == [(1, "register", {})]
    assert await store.audit.events("00000000-0000-4000-8000-00000000dead") == []


async def test_both_stores_record_the_same_sequence(tmp_path: Path) -> None:
    sequences = []
    for name in ("embedded", "production"):
        backend = Backend(name, tmp_path / name)
        try:
            store = await backend.open()
            requester = Requester("00000000-0000-4000-8000-000000000042", 2)
            sequences.append(await sequence(store, await scripted(store, requester)))
        finally:
            await backend.close_all()
    embedded, production = sequences
    assert embedded == production and len(embedded) == 11


async def test_events_since_a_time(store: Store, backend: Backend) -> None:
    user = await make_user(store)
    backend.clock.advance(60)
    linked_at = backend.clock.now_ms()
    await store.devices.add_device(user, new_device(), max_devices=10)
    backend.clock.advance(60)
    assert await store.devices.remove_device(user, 2)
    assert [k for _, k, _ in await sequence(store, user, since_ms=linked_at)] == [
        "add_device",
        "remove_device",
        "identity_key_retired",
    ]
    assert [k for _, k, _ in await sequence(store, user, since_ms=linked_at + 1)] == [
        "remove_device",
        "identity_key_retired",
    ]
    assert await sequence(store, user, since_ms=backend.clock.now_ms() + 1) == []


async def test_purge_deletes_events_older_than_the_cutoff(store: Store, backend: Backend) -> None:
    old = await make_user(store)  # at START_MS
    backend.clock.advance(3600)
    new = await make_user(store)
    assert await store.audit.purge_events(START_MS) == 0  # not older than the cutoff
    assert await store.audit.purge_events(START_MS + 1) == 1
    assert await store.audit.events(old) == []
    assert await sequence(store, new) == [(1, "register", {})]
    assert await store.audit.purge_events(START_MS + 1) == 0


async def test_events_survive_a_restart(backend: Backend) -> None:
    store = await backend.open()
    user = await make_user(store)
    reopened = await backend.open()
    assert await sequence(reopened, user) == [(1, "register", {})]
