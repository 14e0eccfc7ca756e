"""Spec §6 and §8: rate limits, bad-frame budget, configurable limits."""

from __future__ import annotations

import asyncio
import time

from .support import (
    ServerClosed,
    error_of,
    new_user,
    offline_user,
    prekey,
    signed_prekey,
)


async def target_with_keys(url: str):
    owner = await new_user(url)
    assert (await owner.upload(signed_prekey=signed_prekey(owner.identity, 1)))["t"] == "ok"
    await owner.close()
    return owner


def rate_limited(answer: dict) -> None:
    error_of(answer, "rate_limited")
    retry = answer.get("retry_after_ms")
    assert isinstance(retry, int) and not isinstance(retry, bool), answer
    assert retry > 0, answer


async def test_fetch_limit_per_target(relay):
    target = await target_with_keys(relay.url)
    other = await target_with_keys(relay.url)
    fetcher = await new_user(relay.url)
    for _ in range(10):
        assert (await fetcher.fetch(target.user))["t"] == "ok"
    answer = await fetcher.fetch(target.user)
    rate_limited(answer)
    assert answer["retry_after_ms"] <= 10 * 60 * 1000
    # Another target, and another fetcher, are separate budgets.
    assert (await fetcher.fetch(other.user))["t"] == "ok"
    second = await new_user(relay.url)
    assert (await second.fetch(target.user))["t"] == "ok"
    await fetcher.close()
    await second.close()


async def test_fetch_limit_per_device_per_minute(relay):
    targets = await asyncio.gather(*(target_with_keys(relay.url) for _ in range(11)))
    fetcher = await new_user(relay.url)
    started = time.monotonic()
    for t in targets[:10]:
        for _ in range(10):
            answer = await fetcher.fetch(t.user)
            assert answer["t"] == "ok", answer
    # The budget refills one fetch every 0.6 s, so a slow machine may earn a few more
    # before the limit bites: at most one per 0.6 s elapsed since the first fetch.
    extra = 0
    answer = await fetcher.fetch(targets[10].user)
    while answer["t"] == "ok" and extra < 10:
        extra += 1
        answer = await fetcher.fetch(targets[10].user)
    assert extra <= (time.monotonic() - started) / 0.6 + 1, (extra, answer)
    rate_limited(answer)
    assert answer["retry_after_ms"] <= 60 * 1000
    # Other requests are not affected.
    assert (await fetcher.sync())["t"] == "ok"
    await fetcher.close()


async def test_fetch_limits_configurable(relay_factory):
    r = relay_factory(rate_fetch_per_minute=3, rate_fetch_per_target=2)
    a = await target_with_keys(r.url)
    b = await target_with_keys(r.url)
    fetcher = await new_user(r.url)
    assert (await fetcher.fetch(a.user))["t"] == "ok"
    assert (await fetcher.fetch(a.user))["t"] == "ok"
    rate_limited(await fetcher.fetch(a.user))
    assert (await fetcher.fetch(b.user))["t"] == "ok"
    rate_limited(await fetcher.fetch(b.user))
    await fetcher.close()


async def test_rate_limited_fetch_hands_out_no_prekey(relay_factory):
    """A rate-limited fetch hands out no pre-key."""
    r = relay_factory(rate_fetch_per_target=1)
    owner = await new_user(r.url)
    await owner.upload(
        signed_prekey=signed_prekey(owner.identity, 1), prekeys=[prekey(1), prekey(2)]
    )
    fetcher = await new_user(r.url)
    assert (await fetcher.fetch(owner.user))["t"] == "ok"
    rate_limited(await fetcher.fetch(owner.user))
    count = await owner.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 1
    await owner.close()
    await fetcher.close()


async def test_request_rate_limit(relay_factory):
    r = relay_factory(rate_requests=1, rate_requests_burst=5)
    sender = await new_user(r.url)
    (target,) = await offline_user(r.url)
    frames = [sender.send_frame(target) for _ in range(20)]
    answers = await asyncio.gather(*(sender.request(f) for f in frames))
    codes = [a["t"] if a["t"] == "ok" else a["code"] for a in answers]
    assert "ok" in codes, codes
    assert "rate_limited" in codes, codes
    assert set(codes) <= {"ok", "rate_limited"}, codes
    for a in answers:
        if a["t"] == "error":
            rate_limited(a)
    assert codes.count("ok") <= 6, codes
    await sender.close()


async def test_bad_frames_budget_closes_1008(relay_factory):
    r = relay_factory(max_bad_frames=5)
    dev = await new_user(r.url)
    for i in range(40):
        try:
            await dev.send_raw({"t": "send", "rid": i})
        except ServerClosed:
            break
    assert await dev.closed_code() == 1008
    errors = [f for f in dev.received if f.get("t") == "error"]
    assert errors and all(e["code"] == "bad_frame" for e in errors), errors
    assert len(errors) <= 10, len(errors)
    # Other connections are unaffected.
    other = await new_user(r.url)
    assert (await other.sync())["t"] == "ok"
    await other.close()


async def test_bad_frames_under_budget_keep_connection(relay_factory):
    r = relay_factory(max_bad_frames=5)
    dev = await new_user(r.url)
    for i in range(4):
        error_of(await dev.request({"t": "send", "rid": i + 1}), "bad_frame")
    assert (await dev.sync())["t"] == "ok"
    assert not dev.is_closed
    await dev.close()
