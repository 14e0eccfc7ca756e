"""Connections that never finish their opening (docs/security.md, "Floods and slow readers").

The handshake timeout counts from the TCP accept: a connection that never sends the HTTP
upgrade and one that upgrades and never authenticates are both closed by it, while an
honest client registers and exchanges messages. The opening budgets reset connections
beyond them at accept. Full size: `RELAY_FLOOD_FULL=1 .venv/bin/python -m pytest -s -q
tests/e2e/test_floods.py -k embedded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time

import orjson
import pytest

from relay.connection import HANDSHAKE_CLOSE_GRACE_S

from .flood import close_code, open_from, upgrade_request
from .floodscale import FLOOD, FULL, FULL_TIMEOUT_S, RssCurve, ms, p99, rss_mib
from .support import Device, new_user, wait_until

MARGIN_S = 1.5  # event-loop and scheduling delays on a loaded machine
HONEST_P99_S = 0.050
RESULT_LINE_LIMIT = 16 * 1024 * 1024  # a generator's JSON line: two floats per connection
GIVE_UP_S = (
    FLOOD.handshake_timeout * 3 + 10
)  # a connection still open then is counted  # the full-size figure the relay is held to


async def _generator(kind: str, port: int, index: int) -> asyncio.subprocess.Process:
    """One flood process with 8 loopback source addresses of its own (never 127.0.0.1)."""
    octet = 1 if kind == "raw" else 2
    sources = ",".join(f"127.0.{octet}.{index * 8 + s + 1}" for s in range(8))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.e2e.flood",
        kind,
        "--port",
        str(port),
        "--count",
        str(FLOOD.per_kind // FLOOD.processes_per_kind),
        "--rate",
        str(FLOOD.rate / 2 / FLOOD.processes_per_kind),
        "--sources",
        sources,
        "--give-up",
        str(GIVE_UP_S),
        stdout=asyncio.subprocess.PIPE,
        limit=RESULT_LINE_LIMIT,
    )


async def _result(proc: asyncio.subprocess.Process) -> dict:
    assert proc.stdout is not None
    opened = await proc.stdout.readline()
    assert opened == b"opened\n", opened
    line = await asyncio.wait_for(proc.stdout.readline(), GIVE_UP_S + 60)
    await proc.communicate()  # the end of its output: the pipe is closed with it
    assert proc.returncode == 0
    return orjson.loads(line)


async def _register(url: str, retries: list[int], **kw) -> Device:
    """A new user as a client registers one: a connection that times out is tried again
    (the relay's accept queue may be full), each retry counted."""
    for _ in range(3):
        try:
            return await new_user(url, **kw)
        except TimeoutError:
            retries.append(1)
    return await new_user(url, **kw)


async def _honest(url: str, stop: asyncio.Event) -> tuple[list[float], list[float], int]:
    """Register pairs and send messages between them until `stop`: the latencies, and how
    many connection attempts timed out."""
    registers: list[float] = []
    exchanges: list[float] = []
    retries: list[int] = []
    while not stop.is_set():
        started = time.monotonic()
        a = await _register(url, retries)
        b = await _register(url, retries, auto_ack=True)
        registers.append((time.monotonic() - started) / 2)
        for _ in range(50):
            if stop.is_set():
                break
            started = time.monotonic()
            answer = await a.send_message(b)
            exchanges.append(time.monotonic() - started)
            assert answer["t"] == "ok" and answer["delivered"] == [1], answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)  # the pace of a chatting pair
        await a.close()
        await b.close()
    return registers, exchanges, len(retries)


def _check_kind(kind: str, mine: list[dict]) -> list[str]:
    """Print the figures of one kind of flood connection; what went wrong with them."""
    closed = sorted(t for x in mine for t in x["closed_after"])
    ended = [t for x in mine for t in x["ended_after"]]
    lost = {k: sum(x[k] for x in mine) for k in ("failed_connects", "refused", "unended")}
    late = sum(1 for t in closed if t > FLOOD.handshake_timeout + MARGIN_S)
    codes: dict[str, int] = {}
    for x in mine:
        for code, n in x["close_codes"].items():
            codes[code] = codes.get(code, 0) + n
    print(
        f"\nflood {kind}: {len(closed)} closed after {closed[0]:.2f} s, p50 "
        f"{closed[len(closed) // 2]:.2f}, p99 {p99(closed):.2f}, max {closed[-1]:.2f} "
        f"(timeout {FLOOD.handshake_timeout} s; {late} later than {MARGIN_S} s past it); "
        f"sockets gone after {max(ended):.2f} s; not served: {lost}; close codes {codes}"
    )
    problems = []
    if any(lost.values()) or len(closed) != FLOOD.per_kind:
        problems.append(f"{kind}: {len(closed)} of {FLOOD.per_kind} served, {lost}")
    if late or closed[0] < FLOOD.handshake_timeout - 0.2:
        problems.append(f"{kind}: closed after {closed[0]:.2f}-{closed[-1]:.2f} s")
    # A peer that never answers the close frame is dropped after a short grace.
    if max(ended) > FLOOD.handshake_timeout + HANDSHAKE_CLOSE_GRACE_S + MARGIN_S:
        problems.append(f"{kind}: a socket lasted {max(ended):.2f} s")
    if kind == "upgrade" and codes != {"1008": FLOOD.per_kind}:
        problems.append(f"upgrade: close codes {codes}")
    return problems


@pytest.mark.timeout(FULL_TIMEOUT_S if FULL else 120)
async def test_flood_of_unfinished_openings_is_closed_at_the_deadline(relay_factory):
    r = relay_factory(
        handshake_timeout=FLOOD.handshake_timeout,
        max_handshakes=2 * FLOOD.per_kind + 100,  # every flood connection is admitted
    )
    curve = RssCurve(r.pid)
    sampler = asyncio.create_task(curve.run())
    before = rss_mib(r.pid)
    assert r.port is not None
    procs = [
        await _generator(kind, r.port, i)
        for i in range(FLOOD.processes_per_kind)
        for kind in ("raw", "upgrade")
    ]
    stop = asyncio.Event()
    honest = asyncio.create_task(_honest(r.url, stop))
    results = await asyncio.gather(*(_result(p) for p in procs))
    stop.set()
    registers, exchanges, retries = await honest
    after = rss_mib(r.pid)
    sampler.cancel()

    assert registers and exchanges
    print(
        f"honest client during the flood: {len(registers)} registrations p99 "
        f"{ms(p99(registers))} ({retries} connection attempts timed out), "
        f"{len(exchanges)} messages p50 {ms(statistics.median(exchanges))} p99 "
        f"{ms(p99(exchanges))} (max {ms(max(exchanges))})"
    )
    print(f"relay RSS: before {before:.0f} MiB, peak {curve.peak:.0f}, after {after:.0f}")
    print(f"RSS curve: {curve.text()}")
    problems: list[str] = []
    for kind in ("raw", "upgrade"):
        problems += _check_kind(kind, [x for x in results if x["kind"] == kind])
    assert not problems, problems
    if FULL:
        assert p99(exchanges) < HONEST_P99_S, p99(exchanges)


async def _open_raw(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await open_from(source, port)


async def _upgrade_answer(port: int, source: str) -> bytes:
    """What the relay answers a fresh connection's upgrade: b"" when it reset it at accept."""
    reader, writer = await _open_raw(port, source)
    writer.write(upgrade_request(port))
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return b""
    finally:
        writer.close()


async def test_deadline_counts_from_the_accept(relay_factory):
    """An upgrade sent late leaves only what remains of the timeout to authenticate."""
    r = relay_factory(handshake_timeout=2)
    assert r.port is not None
    reader, writer = await _open_raw(r.port, "127.0.0.3")
    opened = time.monotonic()
    await asyncio.sleep(1.5)  # the client's delay before its upgrade is the scenario
    writer.write(upgrade_request(r.port))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    frames = b""
    while close_code(frames) is None:  # the challenge, then the relay's close frame
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, "the stream ended without a close frame"
        frames += chunk
    closed_after = time.monotonic() - opened
    writer.close()
    assert close_code(frames) == 1008
    assert 1.8 <= closed_after <= 2.0 + MARGIN_S / 2, closed_after


async def test_opening_budget_per_address(relay_factory):
    r = relay_factory(handshake_timeout=30, max_handshakes_per_address=5)
    assert r.port is not None
    held = [await _open_raw(r.port, "127.0.0.4") for _ in range(5)]
    assert await _upgrade_answer(r.port, "127.0.0.4") == b""
    # Another address is not affected, and an authenticated connection no longer counts.
    head = await _upgrade_answer(r.port, "127.0.0.5")
    assert head.startswith(b"HTTP/1.1 101"), head
    dev = await new_user(r.url)
    assert (await dev.sync())["t"] == "ok"
    assert await _upgrade_answer(r.port, "127.0.0.4") == b""
    for _, writer in held:
        writer.close()
        await writer.wait_closed()

    async def admitted_again() -> bool:
        return (await _upgrade_answer(r.port, "127.0.0.4")).startswith(b"HTTP/1.1 101")

    await wait_until(admitted_again, 5, what="a freed opening budget")
    await dev.close()


async def test_opening_budget_in_all(relay_factory):
    r = relay_factory(handshake_timeout=30, max_handshakes=4)
    assert r.port is not None
    authenticated = [await new_user(r.url) for _ in range(3)]  # these no longer count
    for dev in authenticated:
        await dev.sync()  # the handshake has finished on the relay's side too
    held = [await _open_raw(r.port, f"127.0.0.{6 + i}") for i in range(4)]
    assert await _upgrade_answer(r.port, "127.0.0.20") == b""
    for dev in authenticated:
        assert (await dev.sync())["t"] == "ok"
    for _, writer in held:
        writer.close()
        await writer.wait_closed()

    async def admitted_again() -> bool:
        return (await _upgrade_answer(r.port, "127.0.0.20")).startswith(b"HTTP/1.1 101")

    await wait_until(admitted_again, 5, what="a freed opening budget")
    for dev in authenticated:
        await dev.close()
    metrics = (await r.ahttp_get("/metrics"))[2].decode()
    assert 'relay_handshakes_total{result="refused"}' in metrics
