"""What lets one relay hold many connections: its open-files limit and its listen queue."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

from .support import RelayProcess, new_user, stop_relays

LOW_SOFT_LIMIT = 256


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
