"""`loadtest.spread`: many devices over several processes and loopback source addresses."""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.support import RelayProcess, stop_relays

from loadtest.spread import PER_SOURCE, connections_per_process, raise_file_limit, source_address
from loadtest.workload import Scenario, Workload, split
from protocol.signatures import IdentityKeyPair, KeyScheme
from protocol.wire import WireConnection, WireOptions

LOOPBACK = "ws://127.0.0.1:8765/v1/ws"


def _storm(devices: int, procs: int = 2) -> Workload:
    return Workload(
        scenario=Scenario.CONNECT_STORM,
        url=LOOPBACK,
        devices=devices,
        rate=1,
        duration=1,
        size=1,
        procs=procs,
    )


def test_more_processes_than_asked_when_one_cannot_hold_its_share() -> None:
    shares = split(_storm(18_000), per_process=4_000)
    assert len(shares) == 5
    assert sum(s.devices for s in shares) == 18_000
    assert max(s.devices for s in shares) <= 4_000
    assert len(split(_storm(18_000), per_process=19_744)) == 2  # as asked


def test_a_process_may_hold_its_hard_limit_less_a_reserve() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 0 < connections_per_process() < hard
    assert raise_file_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_loopback_sources_carry_at_most_their_share() -> None:
    devices = 18_000
    per_source = Counter(source_address(LOOPBACK, devices, g) for g in range(devices))
    assert sorted(per_source) == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert max(per_source.values()) == PER_SOURCE


@pytest.mark.parametrize(
    ("url", "devices"),
    [
        (LOOPBACK, PER_SOURCE),  # few enough for one address
        ("ws://relay.example:8765/v1/ws", 18_000),  # not on this host
        ("ws://localhost:8765/v1/ws", 18_000),  # a name: its address is the resolver's
        ("ws://[::1]:8765/v1/ws", 18_000),
    ],
)
def test_the_system_chooses_the_source_otherwise(url: str, devices: int) -> None:
    assert source_address(url, devices, devices - 1) is None


@pytest.fixture
def live_relay(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = RelayProcess(tmp_path / "relay-data").start()
    yield relay
    problems = stop_relays([relay])
    assert not problems, problems


async def test_a_connection_comes_from_the_source_address_it_names(
    live_relay: RelayProcess,
) -> None:
    options = WireOptions(local_address="127.0.0.3")
    conn = await WireConnection.open(live_relay.url, options)
    try:
        assert conn.websocket.local_address[0] == "127.0.0.3"
        ok = await conn.register(IdentityKeyPair.generate(KeyScheme.ED25519))
        assert ok.device == 1
    finally:
        await conn.close()
