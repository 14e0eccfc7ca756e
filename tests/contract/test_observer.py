"""The observer hook: every backend reports its calls, by fixed operation names, for metrics."""

from __future__ import annotations

import re

from storage.interfaces import Store

from .support import Backend, envelope, make_user

OPERATION = re.compile(r"^[a-z_]+$")


async def test_backend_calls_are_observed(backend: Backend, store: Store) -> None:
    user = await make_user(store)
    await store.messages.store([envelope(user, 1)])
    await store.keys.counts(user, 1)
    await store.messages.stored_count()
    observed = {(name, operation) for name, operation, _ in backend.observed}
    assert all(seconds >= 0 for _, _, seconds in backend.observed)
    assert all(OPERATION.match(operation) for _, operation in observed), observed
    if backend.name == "embedded":
        assert observed == {("sqlite", "batch")}
    else:
        assert {
            ("postgresql", "create_user"),
            ("postgresql", "write_batch"),
            ("postgresql", "key_counts"),
            ("postgresql", "stored_count"),
        } <= observed, observed


async def test_redis_calls_are_observed(production: Backend) -> None:
    store = await production.open()
    user = await make_user(store)
    await store.rate_limiter.hit(f"observer:{user}", rate_per_s=1.0, burst=1)
    operations = {(name, op) for name, op, _ in production.observed if name == "redis"}
    assert operations == {("redis", "rate_limit")}
