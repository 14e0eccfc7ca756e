"""What lets one relay hold many connections: its open-files limit, one keepalive for all."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

from websockets.frames import Frame, Opcode

from .support import (
    RelayProcess,
    new_user,
    queued_on_return,
    stop_relays,
    stopped_reader,
    wait_until,
)

LOW_SOFT_LIMIT = 256
KEEPALIVE_CLOSE = 'code=1011 reason="keepalive ping timeout" by=server'


class LowFileLimitRelay(RelayProcess):
    """A relay started with a soft open-files limit far below the hard one."""

    def argv(self) -> list[str]:
        lower = f'ulimit -Sn {LOW_SOFT_LIMIT} && exec "$@"'
        return ["/bin/sh", "-c", lower, "sh", *super().argv()]


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


async def test_the_relay_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > LOW_SOFT_LIMIT  # Linux: a finite hard limit (at most fs.nr_open)
    relay = LowFileLimitRelay(tmp_path / "data")
    await relay.astart()
    try:
        soft_now, hard_now = _open_files_limits(relay.pid)
        assert hard_now == hard
        assert soft_now == hard_now
        # More connections at once than the soft limit it started with.
        users = await asyncio.gather(*(new_user(relay.url) for _ in range(LOW_SOFT_LIMIT + 44)))
        assert len({u.user for u in users}) == LOW_SOFT_LIMIT + 44
        await asyncio.gather(*(u.close() for u in users))
    finally:
        problems = stop_relays([relay])
    assert not problems, problems


async def test_one_keepalive_closes_the_connection_whose_pongs_stop_and_keeps_the_others(
    relay_factory,
) -> None:
    relay = relay_factory(ping_interval=0.2, ping_timeout=0.5)
    healthy, silent = await new_user(relay.url), await new_user(relay.url)
    assert silent.ws is not None
    protocol = silent.ws.protocol
    send_frame = protocol.send_frame

    def drop_pongs(frame: Frame) -> None:
        if frame.opcode is not Opcode.PONG:
            send_frame(frame)

    protocol.send_frame = drop_pongs  # type: ignore[method-assign]
    assert await silent.closed_code(timeout=10) == 1011
    assert silent.close_reason == "keepalive ping timeout"
    # By now the healthy connection has answered several pings and is still served.
    assert not healthy.is_closed
    answer = await healthy.request_ok({"t": "keys.count"})
    assert answer["t"] == "ok"
    await healthy.close()


async def test_the_keepalive_closes_a_connection_whose_ping_cannot_be_written(
    relay_factory,
) -> None:
    # A reader that stops with less queued for it than the slow-reader checks look for (the
    # deliveries' ack deadline far away, the outbound buffer far from full). Its pings wait
    # behind what it does not read, and websockets' `ping` waits for room without a bound:
    # the keepalive never saw a ping go out, so never a late pong, and held the connection.
    relay = relay_factory(
        ping_interval=0.5,
        ping_timeout=1,
        ack_timeout=0.2,
        slow_reader_timeout=300,
        outbound_buffer_bytes=512 * 1024 * 1024,
    )
    sender = await new_user(relay.url)
    reader = await stopped_reader(relay.url)
    body = b"\x00" * 200_000
    # 25 MB: far more than the kernel's socket buffers and the relay's write buffer hold.
    answers = await asyncio.gather(*(sender.send_message(reader, body=body) for _ in range(128)))
    assert all(answer["stored"] == [1] for answer in answers), "nothing was acked"

    async def closed_by_the_keepalive() -> bool:
        _, _, metrics = await relay.ahttp_get("/metrics")
        return (
            "\nrelay_connections 1.0\n" in metrics.decode()  # the sender's alone
            and KEEPALIVE_CLOSE in relay.stderr_tail(10_000)
        )

    await wait_until(closed_by_the_keepalive, 30, what="the reader closed 1011 and dropped")
    assert await queued_on_return(reader) == len(answers)  # every message stays stored
    await sender.close()
    assert reader.conn is not None
    reader.conn.abort()  # dropped by the relay already: no closing handshake to wait for
