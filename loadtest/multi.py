"""`relay-loadtest fanout --multi`: one group message as `send` frames and as `send.multi`,
side by side in the same run against the same relay.

A sender and `--group` member users with `--member-devices` devices each, all connected
and acknowledging. Group messages go out at `--rate` a second for `--duration` seconds,
the forms taking turns in blocks (so the machine's noise falls on all of them alike):

- `sends`: one `send` per member user (each naming that user's devices), written at once;
- `multi-shared`: one `send.multi` frame, a `--size` payload shared by every device and a
  64-byte header per device;
- `multi-per-device`: one `send.multi` frame with a `--size` body per device.

Per form: the relay's CPU time per group message (`process_cpu_seconds_total` on its
`/metrics`, read before and after each block), the latency from the first frame written
to the last `ok`, and to the last device's delivery, and the bytes written to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any, Final

from loadtest.probe import MetricsProbe
from protocol.codec import WireFormat, encode
from protocol.frames import (
    Deliver,
    DeviceMessage,
    Link,
    MultiDevice,
    MultiRecipient,
    Send,
    SendMulti,
    SendMultiOk,
    SendOk,
)
from protocol.payloads import link_payload
from protocol.signatures import IdentityKeyPair, KeyScheme
from protocol.wire import ServerPush, WireConnection, WireOptions

FORMS: Final = ("sends", "multi-shared", "multi-per-device")
HEADER_BYTES: Final = 64
BLOCK: Final = 5  # group messages of one form in a row
SETUP_CONCURRENCY: Final = 16
TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class MultiWorkload:
    url: str
    group: int
    member_devices: int
    rate: float
    duration: float
    size: int
    fmt: WireFormat = WireFormat.MSGPACK
    ssl: SSLContext | None = None


@dataclass(slots=True)
class FormFigures:
    """What one form of the group message cost, over the run."""

    messages: int = 0
    cpu_seconds: float = 0.0
    frame_bytes: int = 0
    ok_ms: list[float] = field(default_factory=list)
    delivered_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

        per = max(1, self.messages)
        return {
            "messages": self.messages,
            "relay_cpu_ms_per_message": round(1000 * self.cpu_seconds / per, 2),
            "bytes_sent_per_message": self.frame_bytes // per,
            "ok_ms_p50": None if not self.ok_ms else round(statistics.median(self.ok_ms), 2),
            "ok_ms_p99": pct(self.ok_ms, 0.99),
            "delivered_ms_p50": (
                None if not self.delivered_ms else round(statistics.median(self.delivered_ms), 2)
            ),
            "delivered_ms_p99": pct(self.delivered_ms, 0.99),
        }


class _Member:
    """One member device: connected, acknowledging every delivery, reporting its arrival."""

    def __init__(self, on_deliver: Callable[[Deliver], None]) -> None:
        self.identity = IdentityKeyPair.generate(KeyScheme.ED25519)
        self.user = ""
        self.device = 0
        self.registration_id = secrets.randbelow(16380) + 1
        self.conn: WireConnection | None = None
        self._on_deliver = on_deliver
        self._acks: set[asyncio.Task[bool]] = set()

    def _push(self, push: ServerPush) -> None:
        if isinstance(push, Deliver) and self.conn is not None:
            task = asyncio.get_running_loop().create_task(self.conn.ack([push.id]))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
            self._on_deliver(push)

    async def register(self, w: MultiWorkload, *, user: str | None, link: Link | None) -> None:
        options = WireOptions(
            fmt=w.fmt, ssl=w.ssl, ping_interval=None, max_frame_bytes=None, proxy=None
        )
        self.conn = await WireConnection.open(w.url, options, on_push=self._push)
        ok = await self.conn.register(
            self.identity, registration_id=self.registration_id, user=user, link=link
        )
        self.user, self.device = ok.user, ok.device

    def link_for(self, other: _Member) -> Link:
        signature = self.identity.sign(link_payload(self.user, other.identity.public_key))
        return Link(device=self.device, signature=signature)


class _Run:
    def __init__(self, w: MultiWorkload) -> None:
        self.w = w
        self.members: list[list[_Member]] = []
        self.sender = _Member(lambda _: None)
        self.expected: dict[bytes, int] = {}
        self.arrived: dict[bytes, int] = {}
        self.done: dict[bytes, asyncio.Future[float]] = {}
        self.probe = MetricsProbe(w.url, w.ssl)
        self.figures = {form: FormFigures() for form in FORMS}

    def _delivered(self, frame: Deliver) -> None:
        count = self.arrived.get(frame.id, 0) + 1
        self.arrived[frame.id] = count
        waiter = self.done.get(frame.id)
        if waiter is not None and not waiter.done() and count >= self.expected[frame.id]:
            waiter.set_result(time.perf_counter())

    async def setup(self) -> None:
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def member_user() -> list[_Member]:
            async with gate:
                first = _Member(self._delivered)
                await first.register(self.w, user=None, link=None)
                devices = [first]
                for _ in range(self.w.member_devices - 1):
                    linked = _Member(self._delivered)
                    await linked.register(self.w, user=first.user, link=first.link_for(linked))
                    devices.append(linked)
                return devices

        await self.sender.register(self.w, user=None, link=None)
        self.members = list(await asyncio.gather(*(member_user() for _ in range(self.w.group))))

    def _frames(self, form: str) -> list[Send | SendMulti]:
        message_id, nonce, now = uuid.uuid4().bytes, os.urandom(24), int(time.time() * 1000)
        assert self.sender.conn is not None
        conn = self.sender.conn
        if form == "sends":
            return [
                Send(
                    rid=conn.next_rid(),
                    id=message_id,
                    to=devices[0].user,
                    ts=now,
                    nonce=nonce,
                    devices=tuple(
                        DeviceMessage(
                            device=d.device,
                            type=2,
                            body=os.urandom(self.w.size),
                            registration_id=d.registration_id,
                        )
                        for d in devices
                    ),
                )
                for devices in self.members
            ]
        shared = form == "multi-shared"
        return [
            SendMulti(
                rid=conn.next_rid(),
                id=message_id,
                ts=now,
                nonce=nonce,
                payload=os.urandom(self.w.size) if shared else None,
                to=tuple(
                    MultiRecipient(
                        user=devices[0].user,
                        devices=tuple(
                            MultiDevice(
                                device=d.device,
                                type=3 if shared else 2,
                                body=os.urandom(HEADER_BYTES if shared else self.w.size),
                                registration_id=d.registration_id,
                            )
                            for d in devices
                        ),
                    )
                    for devices in self.members
                ),
            )
        ]

    async def one_message(self, form: str) -> None:
        conn = self.sender.conn
        assert conn is not None
        frames = self._frames(form)
        message_id = frames[0].id
        self.expected[message_id] = self.w.group * self.w.member_devices
        arrived = asyncio.get_running_loop().create_future()
        self.done[message_id] = arrived
        figures = self.figures[form]
        figures.frame_bytes += sum(len(encode(f, self.w.fmt)) for f in frames)
        started = time.perf_counter()
        requests = [
            conn.request(f, SendOk) if isinstance(f, Send) else conn.request(f, SendMultiOk)
            for f in frames
        ]
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*requests)
            answered = time.perf_counter()
            delivered = await arrived
        figures.messages += 1
        figures.ok_ms.append(1000 * (answered - started))
        figures.delivered_ms.append(1000 * (delivered - started))
        del self.done[message_id], self.expected[message_id], self.arrived[message_id]

    async def measure(self) -> None:
        interval = 1.0 / self.w.rate
        end = time.perf_counter() + self.w.duration
        turn = 0
        while time.perf_counter() < end:
            form = FORMS[turn % len(FORMS)]
            turn += 1
            before = self.probe.sample()
            block_started = time.perf_counter()
            for k in range(BLOCK):
                due = block_started + k * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the offered rate, not synchronisation
                await self.one_message(form)
            after = self.probe.sample()
            if before is not None and after is not None:
                self.figures[form].cpu_seconds += after.cpu_seconds - before.cpu_seconds

    async def close(self) -> None:
        conns = [self.sender.conn, *(d.conn for devices in self.members for d in devices)]
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


async def run_multi(w: MultiWorkload) -> dict[str, Any]:
    """Set up, measure, and the figures of each form."""
    run = _Run(w)
    try:
        setup_started = time.perf_counter()
        await run.setup()
        setup_s = time.perf_counter() - setup_started
        if run.probe.sample() is None:
            raise RuntimeError(f"no process_cpu_seconds_total at {run.probe.url}")
        await run.measure()
    finally:
        await run.close()
    return {
        "workload": {
            "group": w.group,
            "member_devices": w.member_devices,
            "rate": w.rate,
            "duration": w.duration,
            "size": w.size,
            "header_bytes": HEADER_BYTES,
            "block": BLOCK,
        },
        "setup_s": round(setup_s, 1),
        "forms": {form: figures.summary() for form, figures in run.figures.items()},
    }


def write(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "multi.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def as_rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(figure, one cell per form) for the summary table."""
    forms = result["forms"]
    figures = (
        "messages",
        "relay_cpu_ms_per_message",
        "ok_ms_p50",
        "ok_ms_p99",
        "delivered_ms_p50",
        "delivered_ms_p99",
        "bytes_sent_per_message",
    )
    return [(name, [str(forms[form][name]) for form in FORMS]) for name in figures]
