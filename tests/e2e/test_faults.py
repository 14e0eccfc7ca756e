"""Production mode under faults: a backend lost and back, and heavy concurrent contention.

Production mode only (PostgreSQL + Redis); these tests build their own relays and
backends (a private Redis server, a private PostgreSQL cluster) and clean them up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .stores import REDIS_URL, master_key_env
from .support import (
    Device,
    RelayProcess,
    ServerClosed,
    new_user,
    offline_user,
    pq_prekey,
    prekey,
    signed_prekey,
    stop_relays,
)
from .throwaway import MachineStores, PgCluster, RedisServer, migrate

HIGH_RATES = {
    "rate_requests": 100000,
    "rate_requests_burst": 100000,
    "rate_fetch_per_minute": 100000,
    "rate_fetch_per_target": 100000,
    "rate_prekeys_per_target": 100000,
}


class Relays:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[RelayProcess] = []
        self.problems: list[str] = []

    def start(self, env: dict[str, str], **options: Any) -> RelayProcess:
        r = RelayProcess(self.tmp_path / f"relay-{len(self.started)}", options, env=env)
        self.started.append(r)
        return r.start()

    def finish(self) -> None:
        """Stop every relay (idempotent); a relay that died by itself is a problem."""
        self.problems += stop_relays(self.started)
        self.started.clear()


@pytest.fixture
def machine() -> Iterator[MachineStores]:
    stores = MachineStores()
    yield stores
    stores.cleanup()


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Relays]:
    rs = Relays(tmp_path)
    yield rs
    rs.finish()
    if rs.problems:
        pytest.fail("\n".join(rs.problems), pytrace=False)


async def auth_when_ready(dev: Device, deadline_s: float) -> dict[str, Any]:
    """Connect and authenticate, retrying (new connection each time) until the relay says ok."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            await dev.close()
            await dev.connect()
            answer = await dev.auth(expect_ok=False)
            if answer["t"] == "ok":
                dev.auth_answer = answer
                return answer
            last = answer
        except (ServerClosed, OSError, AssertionError, TimeoutError) as exc:
            last = exc
        await dev.close()
    raise AssertionError(f"{dev!r}: no successful auth within {deadline_s}s; last={last!r}")


# --------------------------------------------------------------------------- Redis outage


async def test_redis_outage_fails_closed_and_recovers(tmp_path, machine, relays):
    server = RedisServer().start()
    try:
        env = machine.env(redis_url=server.url)
        r = relays.start(env, backend_timeout=1)
        sender = await new_user(r.url)
        [receiver] = await offline_user(r.url)
        status, _, body = await r.ahttp_get("/readyz")
        assert status == 200, body

        frames = [sender.send_frame(receiver, body=f"outage {i}".encode()) for i in range(20)]
        server.kill()

        async def timed(frame: dict[str, Any]) -> tuple[dict[str, Any], float]:
            t0 = time.monotonic()
            answer = await sender.request({**frame, "rid": sender.next_rid()}, timeout=8)
            return answer, time.monotonic() - t0

        results = await asyncio.gather(*(timed(f) for f in frames))
        for answer, took in results:
            assert answer["t"] == "error" and answer["code"] == "unavailable", answer
            assert took < 5, f"unavailable only after {took:.1f}s"
        status, _, body = await r.ahttp_get("/readyz")
        assert status == 503, body
        assert json.loads(body)["backends"]["redis"] is False, body
        assert not sender.is_closed, "an unavailable store must not close the connection"

        server.start()
        deadline = time.monotonic() + 30
        while True:
            answer = await sender.request({**frames[0], "rid": sender.next_rid()}, timeout=8)
            if answer["t"] == "ok":
                break
            assert answer.get("code") == "unavailable", answer
            assert time.monotonic() < deadline, f"sends still failing after recovery: {answer}"
        rest = await asyncio.gather(
            *(sender.request({**f, "rid": sender.next_rid()}) for f in frames[1:])
        )
        answers = [answer, *rest]
        for frame, answer in zip(frames, answers, strict=True):
            assert answer["t"] == "ok", answer
            assert answer["id"] == frame["id"]
            assert answer["stored"] == [receiver.device] and answer["delivered"] == [], answer
        while True:
            status, _, body = await r.ahttp_get("/readyz")
            if status == 200:
                break
            assert time.monotonic() < deadline, f"/readyz still {status}: {body!r}"
        assert json.loads(body)["backends"] == {"postgresql": True, "redis": True}

        auth = await receiver.auth()
        got = await receiver.drain()
        ids = [d["id"] for d in got]
        assert sorted(ids) == sorted(f["id"] for f in frames), (len(ids), auth)
        assert auth["queued"] == len(frames)
        await receiver.no_push("deliver", timeout=0.5)
        await receiver.close()
        await sender.close()
    finally:
        relays.finish()  # before the server goes away for good
        server.kill()


# --------------------------------------------------------------------------- PostgreSQL crash

N_BURST = 300
STOP_AFTER = 100


async def test_postgres_cluster_stopped_immediate_loses_nothing_acknowledged(
    tmp_path, machine, relays
):
    cluster = PgCluster()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(migrate, cluster.url)
        env = {
            "RELAY_DATABASE_URL": cluster.url,
            "RELAY_REDIS_URL": REDIS_URL,
            "RELAY_REDIS_PREFIX": machine.new_prefix(),
            **master_key_env(),
        }
        r = relays.start(env, backend_timeout=1, **HIGH_RATES)
        sender = await new_user(r.url)
        receivers = [(await offline_user(r.url))[0] for _ in range(5)]

        ledger: dict[bytes, int] = {}  # message id -> receiver index
        outcomes: Counter[str] = Counter()
        oks = 0
        stopper: asyncio.Task[None] | None = None

        async def one(i: int) -> None:
            nonlocal oks, stopper
            k = i % len(receivers)
            try:
                answer = await sender.send_message(
                    receivers[k], body=f"pg-crash {i}".encode(), timeout=30
                )
            except ServerClosed:
                outcomes["connection closed"] += 1
                return
            if answer["t"] != "ok":
                outcomes[f"error {answer.get('code')}"] += 1
                return
            outcomes["ok"] += 1
            assert answer["delivered"] == [], answer
            assert answer["stored"] == [receivers[k].device], answer
            ledger[answer["id"]] = k
            oks += 1
            if oks == STOP_AFTER and stopper is None:
                stopper = asyncio.create_task(asyncio.to_thread(cluster.stop, "immediate"))

        await asyncio.gather(*(one(i) for i in range(N_BURST)))
        if stopper is None:
            stopper = asyncio.create_task(asyncio.to_thread(cluster.stop, "immediate"))
        await stopper
        assert len(ledger) >= STOP_AFTER
        await sender.close()

        await asyncio.to_thread(cluster.start)
        delivered_total = 0
        for k, dev in enumerate(receivers):
            auth = await auth_when_ready(dev, 30)
            got = await dev.drain(ack=True, timeout=30)
            ids = [d["id"] for d in got]
            assert len(ids) == len(set(ids)), f"{dev!r}: a message delivered twice"
            want = {m for m, kk in ledger.items() if kk == k}
            missing = want - set(ids)
            assert not missing, (
                f"{dev!r}: {len(missing)} of {len(want)} acknowledged messages lost; "
                f"outcomes={dict(outcomes)}"
            )
            assert auth["queued"] >= len(want)
            assert all(d["from"] == sender.user for d in got)
            delivered_total += len(ids)
            await dev.sync()
            await dev.close()
        print(
            f"\npg immediate stop: outcomes={dict(outcomes)} acknowledged={len(ledger)} "
            f"delivered after restart={delivered_total}"
        )
    finally:
        relays.finish()
        await asyncio.to_thread(cluster.destroy)


# --------------------------------------------------------------------------- contention


async def test_thousand_concurrent_fetches_hand_out_each_prekey_once(tmp_path, machine, relays):
    r = relays.start(machine.env(), **HIGH_RATES)
    target = await new_user(r.url)
    ident = target.identity
    ec = [prekey(i) for i in range(1, 101)]
    pq = [pq_prekey(ident, i) for i in range(1, 11)]
    last = pq_prekey(ident, 999)
    answer = await target.upload(
        signed_prekey=signed_prekey(ident, 1), prekeys=ec, pq_prekeys=pq, pq_last_resort=last
    )
    assert answer["t"] == "ok" and answer["prekeys"] == 100 and answer["pq_prekeys"] == 10, answer

    requesters = await asyncio.gather(*(new_user(r.url) for _ in range(50)))
    answers = await asyncio.gather(
        *(
            d.request({"t": "keys.fetch", "user": target.user}, timeout=60)
            for d in requesters
            for _ in range(20)
        )
    )
    assert len(answers) == 1000
    bundles = []
    for a in answers:
        assert a["t"] == "ok", a
        [bundle] = a["devices"]
        assert bundle["device"] == 1
        bundles.append(bundle)
    handed = [b["prekey"] for b in bundles if "prekey" in b]
    ids = Counter(k["id"] for k in handed)
    assert len(ids) == 100, f"{len(ids)} distinct EC pre-keys handed out"
    assert [i for i, n in ids.items() if n > 1] == [], "EC pre-keys handed out twice"
    assert all(k in ec for k in handed)
    assert sum("prekey" not in b for b in bundles) == 900
    one_time_pq = [b["pq_prekey"] for b in bundles if b["pq_prekey"] != last]
    assert sorted(k["id"] for k in one_time_pq) == list(range(1, 11)), "each PQ key once"
    assert all(k in pq for k in one_time_pq)
    assert sum(b["pq_prekey"] == last for b in bundles) == 990
    count = await target.request_ok({"t": "keys.count"})
    assert count["prekeys"] == 0 and count["pq_prekeys"] == 0, count
    for d in [target, *requesters]:
        await d.close()


async def test_hundred_identical_concurrent_sends_deliver_once(tmp_path, machine, relays):
    r = relays.start(machine.env(), **HIGH_RATES)
    sender = await new_user(r.url)
    receiver = await new_user(r.url, auto_ack=True)
    await receiver.next_push("queue_empty")
    frame = sender.send_frame(receiver, body=b"only once")
    answers = await asyncio.gather(
        *(sender.request({**frame, "rid": sender.next_rid()}, timeout=30) for _ in range(100))
    )
    for a in answers:
        assert a["t"] == "ok", a
        assert a["id"] == frame["id"]
        assert (a["delivered"], a["stored"]) == (answers[0]["delivered"], answers[0]["stored"]), (
            a,
            answers[0],
        )
    assert answers[0]["delivered"] == [receiver.device] and answers[0]["stored"] == [], answers[0]
    first = await receiver.next_push("deliver")
    assert first["id"] == frame["id"] and first["body"] == b"only once"

    marker = await sender.send_message(receiver, body=b"the next one")
    assert marker["t"] == "ok" and marker["delivered"] == [receiver.device], marker
    second = await receiver.next_push("deliver")
    assert second["id"] == marker["id"], f"a second copy arrived: {second}"
    assert receiver.buffered("deliver") == []
    await sender.close()
    await receiver.close()
