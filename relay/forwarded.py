"""The client address that the per-address connection cap counts, behind trusted proxies.

A proxy in front of the relay connects from its own address, so every client would share
one per-address budget. When the peer is one of `--trusted-proxies`, its `X-Forwarded-For`
is read from the right (the hop the trusted proxy itself appended) leftwards, skipping
further trusted proxies: the first address not trusted is the client. Everything left of it
was written by that client and may be forged, so it is never read. A peer that is not
trusted is counted by its own address whatever headers it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "X-Forwarded-For"


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The networks whose `X-Forwarded-For` is believed."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def trusts_peer(self, peer: str) -> bool:
        """Whether the TCP peer `peer` (an address as text) is a trusted proxy."""
        address = _address(peer)
        return address is not None and self.trusts(address)

    def client_address(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """`peer` itself, or the right-most untrusted address its proxies forwarded.

        `forwarded_for` holds the values of every X-Forwarded-For header, in order. An entry
        that is not an IP address ends the walk at the last trusted hop, which is then counted.
        """
        hop = _address(peer)
        if hop is None or not self.trusts(hop):
            return peer
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                break
            hop = address
            if not self.trusts(hop):
                break
        return str(hop)
