"""Fixtures of the client SDK tests: real relays on both stores, SDK clients on temp stores."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.stores import MODES, StoreProvisioner
from e2e.support import RelayProcess, stop_relays

StartRelay = Callable[..., RelayProcess]


def free_port() -> int:
    """A port to pin a relay to, so that its restarts keep the URL the clients know."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session", params=MODES)
def stores(request: pytest.FixtureRequest) -> Iterator[StoreProvisioner]:
    """Every SDK end-to-end test runs once per relay store: embedded, and PostgreSQL + Redis."""
    provisioner = StoreProvisioner(request.param)
    yield provisioner
    provisioner.cleanup()


@pytest.fixture
def relay_factory(tmp_path: Path, stores: StoreProvisioner) -> Iterator[StartRelay]:
    """Start relays on a fixed port of their own (``--port``), so restarts keep their URL."""
    relays: list[RelayProcess] = []

    def start(**options: Any) -> RelayProcess:
        pick = "port" not in options
        env = stores.new_store_env()
        for attempt in range(3):
            if pick:
                options["port"] = free_port()
            r = RelayProcess(tmp_path / f"relay-{len(relays)}", options, env=env)
            relays.append(r)
            try:
                return r.start()
            except RuntimeError:
                if not pick or attempt == 2:
                    raise  # another process may have taken the free port in between
        raise AssertionError("unreachable")

    yield start
    problems = stop_relays(relays)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def shared_relay(
    tmp_path_factory: pytest.TempPathFactory, stores: StoreProvisioner
) -> Iterator[RelayProcess]:
    """One relay with default options for the tests of a module that neither restart it
    nor change its options (every test makes users of its own)."""
    r = RelayProcess(tmp_path_factory.mktemp("relay") / "data", {}, env=stores.new_store_env())
    r.start()
    yield r
    problems = stop_relays([r])
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def relay(shared_relay: RelayProcess) -> RelayProcess:
    assert shared_relay.running(), f"shared relay died\n{shared_relay.stderr_tail()}"
    return shared_relay
