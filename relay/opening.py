"""The opening of a connection, from TCP accept to `auth.ok`: one deadline and one budget.

A peer that opens TCP connections and never sends the HTTP upgrade, or upgrades and never
authenticates, holds a socket, buffers and a task each. So the opening is bounded twice:

* in time: `--handshake-timeout` counts from the accept (websockets' `open_timeout` covers
  the upgrade, the relay's own deadline the rest, both ending at the same instant);
* in number: at most `--max-handshakes` connections are opening at once, and at most
  `--max-handshakes-per-address` from one peer address. A connection over either budget is
  reset at once, before anything is read from it or allocated for it.

A trusted proxy's address is exempt from the per-address budget (every client behind it
shares it; the client's own address is known only from the upgrade's headers); the global
budget still applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from relay.wsconnection import RelayConnection

log = logging.getLogger("relay.opening")


class OpeningBudget:
    """Counts the connections still opening, in all and per peer address."""

    def __init__(
        self,
        *,
        total: int,
        per_address: int,
        exempt: Callable[[str], bool],
        on_refused: Callable[[], None],
    ) -> None:
        self._total = total
        self._per_address = per_address
        self._exempt = exempt
        self._on_refused = on_refused
        self._count = 0
        self._by_address: Counter[str] = Counter()

    @property
    def opening(self) -> int:
        return self._count

    def admit(self, address: str) -> bool:
        """Count one more opening connection from `address`; False: a budget is spent."""
        exempt = self._exempt(address)
        if self._count >= self._total or (
            not exempt and self._by_address[address] >= self._per_address
        ):
            self._on_refused()
            return False
        self._count += 1
        if not exempt:
            self._by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self._count -= 1
        if address in self._by_address:
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]


class OpeningConnection(RelayConnection):
    """A server connection that knows when it was accepted and holds its opening budget
    until the handshake ends (`opened`) or the socket closes."""

    budget: OpeningBudget  # set on the subclass `connection_class` makes
    timeout: float
    ended: Callable[[], None]  # every connection's end, counted (relay.heap)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = 0.0  # loop time at which the opening must be over
        self._peer = "?"
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.deadline = self.loop.time() + self.timeout
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        super().connection_made(transport)
        if self.budget.admit(self._peer):
            self._counted = True
        else:
            # Reset, not closed: nothing is read and no handshake runs for it.
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.opened()
        self.ended()
        super().connection_lost(exc)
        # websockets binds the server's `select_subprotocol` to the Sans-I/O protocol in a
        # closure over this connection: connection -> protocol -> bound method -> closure ->
        # connection. That cycle kept every closed connection (its transport, request and
        # buffers, some 30 objects) until an older generation's collection: 60 ms pauses in a
        # reconnect storm. The callback serves the opening handshake alone; without it the
        # connection is freed by its reference count once its handler ends.
        vars(self.protocol).pop("select_subprotocol", None)

    def opened(self) -> None:
        """The handshake is over (authenticated, refused or closed): its budget is free."""
        if self._counted:
            self._counted = False
            self.budget.release(self._peer)


def connection_class(
    budget: OpeningBudget, timeout: float, ended: Callable[[], None]
) -> type[OpeningConnection]:
    """The connection type one server creates: its budget, deadline and end hook, bound."""
    return type(
        "RelayConnection",
        (OpeningConnection,),
        {"budget": budget, "timeout": timeout, "ended": staticmethod(ended)},
    )
