"""The scenarios, as seen from one generator process with its share of the devices.

Every scenario has a setup (register devices, before the shared start time
`t0`) and a measured phase from `t0`. Traffic is open-loop: the instant of every
send is fixed in advance by the target rate, and latencies count from that
instant, so a slow server cannot slow the generator down and hide its own
latency (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.device import DeviceError, SimDevice, new_message
from loadtest.ledger import Ledger
from loadtest.recorder import Recorder
from loadtest.spread import source_address
from loadtest.workload import Pairing, Scenario, Share, Workload
from protocol.client.tls import context_for
from protocol.codec import WireFormat

POLL = 0.05


@dataclass(slots=True)
class Fleet:
    """The devices of one process, the ledger and the recorder they report to."""

    workload: Workload
    share: Share
    ledger: Ledger
    recorder: Recorder
    devices: list[SimDevice]

    @property
    def senders_and_receivers(self) -> tuple[list[SimDevice], list[SimDevice]]:
        return self.devices[0::2], self.devices[1::2]


async def setup(workload: Workload, share: Share, recorder: Recorder) -> Fleet:
    """Register this process's devices (a few at a time); offline scenarios close some again."""
    ledger = Ledger()
    tls = context_for(workload.url, workload.ca_file)  # one context for the process's devices
    urls = workload.urls  # devices spread over the nodes (one node unless `faults`)
    devices = [
        SimDevice(
            urls[share.global_index(i) % len(urls)],
            ledger,
            recorder,
            fmt=WireFormat(workload.subprotocol),
            prekeys=workload.prekeys,
            e2e=workload.e2e,
            ssl=tls,
            source=source_address(workload.url, workload.devices, share.global_index(i)),
        )
        for i in range(share.devices)
    ]
    gate = asyncio.Semaphore(workload.setup_concurrency)
    if workload.scenario is Scenario.CONNECT_STORM:
        offline = set(range(len(devices)))
    elif workload.scenario is Scenario.OFFLINE_DRAIN:
        offline = set(range(1, len(devices), 2))
    else:
        offline = set()

    async def register(i: int, dev: SimDevice) -> None:
        async with gate:
            await dev.register()
            # Devices that start offline close at once, so the server never holds
            # them all during setup (its RSS before the storm stays a fair baseline).
            if i in offline:
                await dev.close()

    await asyncio.gather(*(register(i, d) for i, d in enumerate(devices)))
    fleet = Fleet(workload, share, ledger, recorder, devices)
    if workload.e2e:
        await _start_sessions(fleet, gate)
    return fleet


async def _start_sessions(fleet: Fleet, gate: asyncio.Semaphore) -> None:
    """`--e2e`: each sender starts its sessions; pairs that both send exchange a first message.

    The first messages go through the relay like any other but into a ledger of
    their own, so the run's ledger and recorder only see the measured phase.
    """
    w, devs = fleet.workload, fleet.devices
    if w.scenario is Scenario.CONNECT_STORM:
        return
    if w.scenario is Scenario.FANOUT:
        size = w.group + 1
        links = [(devs[g], r) for g in range(0, len(devs), size) for r in devs[g + 1 : g + size]]
    else:
        links = list(zip(devs[0::2], devs[1::2], strict=True))

    async def start(initiator: SimDevice, peer: SimDevice) -> None:
        async with gate:
            fetched = await initiator.fetch(peer.user)
            assert initiator.cipher is not None
            initiator.cipher.start(peer.user, fetched)

    await asyncio.gather(*(start(a, b) for a, b in links))
    if w.scenario in (Scenario.FANOUT, Scenario.OFFLINE_DRAIN):
        return  # only the initiators send
    first = Ledger()
    for d in devs:
        d.ledger = first
    for a, b in links:
        a.submit(new_message(first, b.user, w.size, time.time()))
    first.close()
    try:
        async with asyncio.timeout(w.grace + len(links) / 50):
            await first.settled.wait()
    except TimeoutError:
        raise DeviceError("e2e:first_messages_not_delivered") from None
    for d in devs:
        d.ledger = fleet.ledger


async def run(fleet: Fleet, t0: float) -> None:
    """The measured phase, then the wait for every open message (bounded by `grace`)."""
    w = fleet.workload
    runner = {
        Scenario.STEADY: _steady,
        Scenario.SOAK: _steady,
        Scenario.FANOUT: _fanout,
        Scenario.OFFLINE_DRAIN: _offline_drain,
        Scenario.CONNECT_STORM: _connect_storm,
        Scenario.RECONNECT_STORM: _reconnect_storm,
        Scenario.FAULTS: _faults,
    }[w.scenario]
    await runner(fleet, t0)
    fleet.ledger.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(w.grace):
            await fleet.ledger.settled.wait()
    fleet.recorder.mark("settled", time.time())


async def teardown(fleet: Fleet) -> None:
    await asyncio.gather(*(d.close() for d in fleet.devices))


async def _paced(
    t0: float, rate: float, end: float, offset: float, emit: Callable[[int, float], None]
) -> None:
    """Call `emit(k, t_k)` for t_k = t0 + (k + offset) / rate, never earlier than t_k."""
    if rate <= 0:
        return
    interval = 1.0 / rate
    k = 0
    while True:
        t = t0 + (k + offset) * interval
        if t >= end:
            return
        delay = t - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.time()
        while t <= now and t < end:
            emit(k, t)
            k += 1
            t = t0 + (k + offset) * interval


async def _sampler(recorder: Recorder, end: float) -> None:
    """Sample the gauges once per interval until `end`."""
    while True:
        now = time.time()
        if now >= end:
            return
        recorder.sample(now)
        await asyncio.sleep(recorder.bucket - (now - recorder.t0) % recorder.bucket)


def _steady_emitter(fleet: Fleet) -> Callable[[int, float], None]:
    w, devs = fleet.workload, fleet.devices
    n = len(devs)
    rng = random.Random(fleet.share.index)

    def emit(k: int, t: float) -> None:
        s = k % n
        if w.pairing is Pairing.PAIRS:
            r = s ^ 1
        else:
            r = rng.randrange(n - 1)
            r += r >= s
        devs[s].submit(new_message(fleet.ledger, devs[r].user, w.size, t))

    return emit


async def _steady(fleet: Fleet, t0: float) -> None:
    w, share = fleet.workload, fleet.share
    end = t0 + w.duration
    await asyncio.gather(
        _paced(t0, share.rate, end, share.index / share.procs, _steady_emitter(fleet)),
        _sampler(fleet.recorder, end),
    )


async def _fanout(fleet: Fleet, t0: float) -> None:
    """One sender per group of `group` receivers; each group message is one send per receiver."""
    w, share, devs = fleet.workload, fleet.share, fleet.devices
    size = w.group + 1
    groups = [devs[i : i + size] for i in range(0, len(devs), size)]

    def emit(k: int, t: float) -> None:
        sender, *receivers = groups[k % len(groups)]
        for r in receivers:
            sender.submit(new_message(fleet.ledger, r.user, w.size, t))

    end = t0 + w.duration
    await asyncio.gather(
        _paced(t0, share.rate, end, share.index / share.procs, emit),
        _sampler(fleet.recorder, end),
    )


async def _offline_drain(fleet: Fleet, t0: float) -> None:
    """Queue `queue` messages per offline receiver, then reconnect them all and time the drain."""
    w, ledger, rec = fleet.workload, fleet.ledger, fleet.recorder
    senders, receivers = fleet.senders_and_receivers
    sampler = asyncio.create_task(_sampler(rec, float("inf")))
    for s, r in zip(senders, receivers, strict=True):
        for _ in range(w.queue):
            s.submit(new_message(ledger, r.user, w.size, time.time()))
    total = len(receivers) * w.queue
    deadline = time.time() + w.grace + total / 100
    while sum(e.answer != 0 for e in ledger.entries.values()) < total:
        if time.time() > deadline:
            break
        await asyncio.sleep(POLL)
    rec.mark("queued", time.time())
    started = time.time()
    rec.mark("drain_start", started)

    async def drain(dev: SimDevice) -> None:
        try:
            await dev.connect(started)
            async with asyncio.timeout(w.grace + w.queue / 10):
                await dev.queue_empty.wait()
            rec.drained(time.time(), started)
        except (DeviceError, TimeoutError) as exc:
            rec.connection_error(str(exc) or "drain:timeout", time.time())

    await asyncio.gather(*(drain(d) for d in receivers))
    ledger.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(w.grace):
            await ledger.settled.wait()
    rec.mark("drain_end", time.time())
    sampler.cancel()
    rec.sample(time.time())


async def _connect_storm(fleet: Fleet, t0: float) -> None:
    """Open connections at `connect_rate` (all processes together) up to every device, then
    hold them all for `hold` seconds (from the last handshake, however late the ramp ends)."""
    w, share, rec = fleet.workload, fleet.share, fleet.recorder
    sampler = asyncio.create_task(_sampler(rec, float("inf")))

    async def open_one(local: int, dev: SimDevice) -> None:
        scheduled = t0 + share.global_index(local) / w.connect_rate
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await dev.connect(scheduled)
        except DeviceError as exc:
            rec.connection_error(exc.kind, time.time())

    await asyncio.gather(*(open_one(i, d) for i, d in enumerate(fleet.devices)))
    ramp_done = time.time()
    rec.mark("ramp_done", ramp_done)
    sampler.cancel()
    await _sampler(rec, ramp_done + w.hold)


async def _reconnect_storm(fleet: Fleet, t0: float) -> None:
    """Steady traffic; at a third of the run every connection drops and comes back with jitter."""
    w, share, rec = fleet.workload, fleet.share, fleet.recorder
    end = t0 + w.duration
    drop_at = t0 + w.duration / 3
    rng = random.Random(1000 + share.index)

    async def storm() -> None:
        delay = drop_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        dropped = time.time()
        rec.mark("drop", dropped)
        await asyncio.gather(*(d.close(abort=True) for d in fleet.devices))

        async def back(dev: SimDevice) -> None:
            planned = dropped + rng.uniform(0, w.jitter)
            wait = planned - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            for _ in range(5):
                try:
                    await dev.connect(planned)
                    return
                except DeviceError as exc:
                    rec.connection_error(exc.kind, time.time())

        await asyncio.gather(*(back(d) for d in fleet.devices))
        rec.mark("recovered", time.time())

    await asyncio.gather(
        _paced(t0, share.rate, end, share.index / share.procs, _steady_emitter(fleet)),
        _sampler(rec, end),
        storm(),
    )


async def _faults(fleet: Fleet, t0: float) -> None:
    """Traffic while devices come and go and nodes fail: each device alternates online and
    offline periods (offline `offline_share` of the time, `away` s on average); a device
    whose connection the server or network ends moves to the next node after up to `jitter`
    s. After the traffic every device stays online until the ledger settles (or `grace`)."""
    w, share, rec = fleet.workload, fleet.share, fleet.recorder
    end = t0 + w.duration
    rng = random.Random(2000 + share.index)
    urls = list(w.urls)

    async def reconnect(dev: SimDevice, delay: float) -> None:
        """Until connected: a failed attempt moves to the next node, with a short backoff."""
        if delay > 0:
            await asyncio.sleep(delay)
        backoff = 0.1
        while not dev.connected:
            try:
                await dev.connect()
            except DeviceError as exc:
                rec.connection_error(exc.kind, time.time())
                dev.url = urls[(urls.index(dev.url) + 1) % len(urls)]
                await asyncio.sleep(backoff * (0.5 + rng.random()))
                backoff = min(2.0, backoff * 2)

    async def dropped_or(dev: SimDevice, seconds: float) -> bool:
        """Wait up to `seconds`; True when the connection was ended meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await dev.dropped.wait()
        if not dev.dropped.is_set():
            return False
        dev.dropped.clear()
        dev.url = urls[(urls.index(dev.url) + 1) % len(urls)]
        await reconnect(dev, rng.uniform(0, w.jitter))
        return True

    async def life(dev: SimDevice) -> None:
        await reconnect(dev, 0)

        def online_period() -> float:
            left = end - time.time()
            if not w.offline_share:
                return left
            mean = w.away * (1 - w.offline_share) / w.offline_share
            return min(rng.expovariate(1 / mean), left)

        while time.time() < end:
            if await dropped_or(dev, online_period()):
                continue
            if time.time() >= end:
                break
            await dev.close()  # a planned offline period: its messages are stored meanwhile
            await asyncio.sleep(min(rng.expovariate(1 / w.away), max(0.0, end - time.time())))
            await reconnect(dev, 0)
        while True:  # online until cancelled: nodes may still fail during the grace period
            await dropped_or(dev, 3600)

    lives = [asyncio.create_task(life(d)) for d in fleet.devices]
    try:
        await asyncio.gather(
            _paced(t0, share.rate, end, share.index / share.procs, _steady_emitter(fleet)),
            _sampler(rec, end),
        )
        fleet.ledger.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(w.grace):
                await fleet.ledger.settled.wait()
    finally:
        for task in lives:
            task.cancel()
        await asyncio.gather(*lives, return_exceptions=True)
