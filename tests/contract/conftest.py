"""The contract suite: every test runs against every storage backend.

A backend joins by adding its name to BACKENDS and a branch in `support.Backend._open_store`.
Tests reach time through `backend.clock` (a FakeClock the backend is given), and reach a
restart through `backend.open()` (a new store on the same data).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.interfaces import Store

from .support import Backend, create_database, drop_database

BACKENDS = ["embedded", "production"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened = Backend(str(request.param), tmp_path / "data")
    try:
        yield opened
    finally:
        await opened.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
async def production(tmp_path: Path) -> AsyncIterator[Backend]:
    """The production backend alone, for the tests of its own promises."""
    opened = Backend("production", tmp_path / "data")
    try:
        yield opened
    finally:
        await opened.close_all()


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A new PostgreSQL database with no schema, dropped afterwards."""
    name = f"relay_test_{secrets.token_hex(8)}"
    url = await create_database(name)
    try:
        yield url
    finally:
        await drop_database(name)
