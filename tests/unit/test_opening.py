"""relay.opening: the budgets of connections still opening, in all and per address."""

from __future__ import annotations

import asyncio
import gc
import weakref

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from protocol.codec import SUBPROTOCOLS
from relay.opening import OpeningBudget, connection_class
from relay.server import choose_subprotocol


def budget(total: int, per_address: int, refusals: list[int]) -> OpeningBudget:
    return OpeningBudget(
        total=total,
        per_address=per_address,
        exempt=lambda address: address == "10.0.0.1",
        on_refused=lambda: refusals.append(1),
    )


def test_per_address_budget_and_release() -> None:
    refusals: list[int] = []
    b = budget(10, 2, refusals)
    assert b.admit("a") and b.admit("a")
    assert not b.admit("a")
    assert b.admit("b")
    assert b.opening == 3 and len(refusals) == 1
    b.release("a")
    assert b.admit("a")
    assert b.opening == 3


def test_total_budget_counts_every_address() -> None:
    refusals: list[int] = []
    b = budget(3, 2, refusals)
    assert b.admit("a") and b.admit("b") and b.admit("c")
    assert not b.admit("d")
    b.release("b")
    assert b.admit("d")
    assert len(refusals) == 1


def test_trusted_proxy_is_exempt_from_the_per_address_budget_only() -> None:
    refusals: list[int] = []
    b = budget(4, 1, refusals)
    assert all(b.admit("10.0.0.1") for _ in range(4))
    assert not b.admit("10.0.0.1")  # the total still applies
    for _ in range(4):
        b.release("10.0.0.1")
    assert b.opening == 0
    assert b.admit("a") and not b.admit("a")


async def test_a_closed_connection_is_freed_by_its_reference_count() -> None:
    """A connection of the relay's server (its connection class and subprotocol choice, on
    websockets' real server and client) is freed when it closes, not left in a reference
    cycle for the cyclic collector: the collector is off here, so only a reference count
    reaching zero can run the finalizer."""
    opening = budget(10, 10, [])
    freed = asyncio.Event()
    handled = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        weakref.finalize(connection, freed.set)
        await connection.wait_closed()
        handled.set()

    gc.disable()
    try:
        async with serve(
            handler,
            "127.0.0.1",
            0,
            select_subprotocol=choose_subprotocol,
            subprotocols=[Subprotocol(p.value) for p in SUBPROTOCOLS],
            create_connection=connection_class(opening, 10.0, lambda: None),
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(
                f"ws://127.0.0.1:{port}", subprotocols=[Subprotocol(SUBPROTOCOLS[0].value)]
            ) as client:
                assert client.subprotocol == SUBPROTOCOLS[0].value
            async with asyncio.timeout(10):
                await handled.wait()
                await freed.wait()
        assert opening.opening == 0
    finally:
        gc.enable()
