"""Fixtures of the end-to-end suite: real relay processes on fresh data dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .stores import MODES, StoreProvisioner
from .support import RelayProcess, stop_relays

StartRelay = Callable[..., RelayProcess]


def _finish(relays: list[RelayProcess]) -> None:
    problems = stop_relays(relays)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="session", params=MODES)
def stores(request: pytest.FixtureRequest) -> Iterator[StoreProvisioner]:
    """Every end-to-end test runs once per store: embedded, and PostgreSQL + Redis."""
    provisioner = StoreProvisioner(request.param)
    yield provisioner
    provisioner.cleanup()


@pytest.fixture
def relay_factory(tmp_path: Path, stores: StoreProvisioner) -> Iterator[StartRelay]:
    """Start relays with given options (``ack_timeout=0.5`` -> ``--ack-timeout 0.5``)."""
    relays: list[RelayProcess] = []

    def start(*, env: dict[str, str] | None = None, **options: Any) -> RelayProcess:
        merged = {**stores.new_store_env(), **(env or {})}
        r = RelayProcess(tmp_path / f"relay-{len(relays)}", options, env=merged)
        relays.append(r)
        return r.start()

    yield start
    _finish(relays)


@pytest.fixture(scope="module")
def shared_relay(
    tmp_path_factory: pytest.TempPathFactory, stores: StoreProvisioner
) -> Iterator[RelayProcess]:
    """One relay with default options, shared by the tests of a module."""
    r = RelayProcess(tmp_path_factory.mktemp("relay") / "data", {}, env=stores.new_store_env())
    r.start()
    yield r
    _finish([r])


@pytest_asyncio.fixture
async def relay(shared_relay: RelayProcess) -> AsyncIterator[RelayProcess]:
    """The module's relay, checked to be still running before each test."""
    assert shared_relay.running(), f"shared relay died\n{shared_relay.stderr_tail()}"
    yield shared_relay
