"""Readers that stop reading while messages keep coming (docs/security.md, "Floods and slow
readers").

Each is closed with 1013 once its oldest delivery has waited the slow-reader timeout for
its ack (its buffers never fill: the kernel's absorb a few hundred deliveries), the relay's
memory levels off, every message stays stored and is delivered when the reader comes back,
and honest pairs meanwhile are measured against the same pairs before the slow readers
came. Full size: `RELAY_FLOOD_FULL=1 .venv/bin/python -m pytest -s -q
tests/e2e/test_slow_readers.py -k embedded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import sys
import time

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from .floodscale import FULL, FULL_TIMEOUT_S, SLOW, RssCurve, ms, p99
from .support import Device, new_user, wait_until

CLOSES_1013 = re.compile(r'^relay_\w+\{[^}]*"1013"[^}]*\} ([0-9.e+]+)$', re.MULTILINE)
HONEST_RATIO = 2.0  # the full-size bound: others' p99 with slow readers / without


async def _exchange(pairs: list[tuple[Device, Device]], seconds: float) -> list[float]:
    """Each pair sends a message every 50 ms for `seconds`: send-to-answer latencies (the
    answer comes after the recipient's ack)."""
    latencies: list[float] = []

    async def chat(a: Device, b: Device) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            sent = time.monotonic()
            answer = await a.send_message(b)
            latencies.append(time.monotonic() - sent)
            assert answer["t"] == "ok" and answer["delivered"] == [1], answer
            await asyncio.sleep(0.05)  # the pace of a chatting pair

    await asyncio.gather(*(chat(a, b) for a, b in pairs))
    return latencies


async def _closes_1013(r) -> int:
    _, _, body = await r.ahttp_get("/metrics")
    return int(sum(float(m.group(1)) for m in CLOSES_1013.finditer(body.decode())))


async def _load(r, *recipients: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.e2e.slowload",
        r.url,
        "--seconds",
        str(SLOW.seconds),
        "--rate",
        str(SLOW.rate),
        *(recipients or ("--readers", str(SLOW.slow_readers))),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _measured(load: asyncio.subprocess.Process, pairs) -> tuple[list[float], dict]:
    """The honest pairs' latencies while the load runs, and the load's result."""
    during = await _exchange(pairs, SLOW.seconds)
    out, err = await asyncio.wait_for(load.communicate(), SLOW.seconds + 120)
    assert load.returncode == 0, err.decode()[-2000:]
    result = orjson.loads(out)
    assert result["refused"] == {}, result["refused"]
    return during, result


@pytest.mark.timeout(FULL_TIMEOUT_S if FULL else 120)
async def test_slow_readers_closed_1013_messages_kept_others_served(relay_factory):
    r = relay_factory(slow_reader_timeout=SLOW.slow_reader_timeout)
    pairs = [
        (await new_user(r.url), await new_user(r.url, auto_ack=True)) for _ in range(SLOW.pairs)
    ]
    # The same load first for readers that read: the run without slow readers.
    before, _ = await _measured(await _load(r), pairs)

    slow: list[Device] = []
    for _ in range(SLOW.slow_readers):
        dev = Device(r.url)
        dev.connect_kwargs = {"max_queue": 1}
        await dev.register()
        await dev.next_push("queue_empty")
        dev.stop_reading()  # the kernel's buffers fill, then nothing more is read
        slow.append(dev)
    curve = RssCurve(r.pid)
    sampler = asyncio.create_task(curve.run())
    started = time.monotonic()
    during, result = await _measured(await _load(r, *(str(dev.user) for dev in slow)), pairs)
    load_s = time.monotonic() - started

    async def all_closed() -> bool:
        return await _closes_1013(r) >= SLOW.slow_readers

    await wait_until(all_closed, 30, what="every slow reader closed with 1013")
    sampler.cancel()
    for dev in slow:
        with contextlib.suppress(ConnectionClosed):
            async for _ in dev.ws:  # what was buffered, then the close
                pass
        assert dev.ws.close_code == 1013, (dev.ws.close_code, dev.ws.close_reason)

    # Every accepted message is stored and delivered when the reader comes back.
    delivered = 0
    for dev in slow:
        again = Device(r.url, identity=dev.identity, user=dev.user, device=dev.device)
        auth = await again.auth()
        sent = set(result["accepted"][dev.user])
        assert auth["queued"] == len(sent), (auth["queued"], len(sent))
        got = await again.drain(ack=True, timeout=30)
        assert {d["id"].hex() for d in got} == sent
        delivered += len(got)
        await again.close()
    for a, b in pairs:
        await a.close()
        await b.close()

    ratio = p99(during) / p99(before)
    print(
        f"\n{SLOW.slow_readers} slow readers, {delivered} messages for them in {load_s:.0f} s, "
        f"all closed 1013 (timeout {SLOW.slow_reader_timeout} s) and delivered on return"
    )
    print(
        f"honest pairs ({SLOW.pairs}), the same load for {SLOW.slow_readers} readers: "
        f"p99 {ms(p99(before))} when they read "
        f"({len(before)} messages, p50 {ms(statistics.median(before))}), {ms(p99(during))} "
        f"when they stop ({len(during)}, p50 {ms(statistics.median(during))}): ratio {ratio:.2f}"
    )
    print(f"relay RSS: peak {curve.peak:.0f} MiB; curve {curve.text()}")
    if FULL:
        assert ratio <= HONEST_RATIO, ratio
