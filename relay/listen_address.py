"""`HOST:PORT` as an operator writes a listening address (`--admin-listen`): a name or IPv4
address, or an IPv6 address in brackets, then a port 0..65535 (0 picks a free one)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_ADDRESS_CHARS = 300  # a DNS name (253) with brackets, colon and port fits
EXAMPLES = "HOST:PORT such as 127.0.0.1:9100, localhost:9100 or [::1]:9100"


class BadListenAddress(ValueError):
    """The text is not HOST:PORT; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # as given to bind(): IPv6 without its brackets
    port: int

    def url(self, scheme: str, port: int | None = None) -> str:
        """`scheme://host:port/`, the IPv6 host in brackets; `port` for the one bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port if port is None else port}/"


def parse_listen_address(text: str) -> ListenAddress:
    if len(text) > MAX_ADDRESS_CHARS:
        raise BadListenAddress(f"longer than {MAX_ADDRESS_CHARS} characters; use {EXAMPLES}")
    host, port_text = _split(text)
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise BadListenAddress(f"port {port_text!r} is not a number; use {EXAMPLES}")
    port = int(port_text)
    if port > 65535:
        raise BadListenAddress(f"port {port} is not in 0..65535")
    return ListenAddress(host, port)


def _split(text: str) -> tuple[str, str]:
    """(host, port text) of `host:port` or `[v6]:port`."""
    if text.startswith("["):
        inside, closing, rest = text[1:].partition("]")
        if not closing or not rest.startswith(":"):
            raise BadListenAddress(f"{text!r} is not [IPV6]:PORT; use {EXAMPLES}")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise BadListenAddress(f"{inside!r} in brackets is not an IPv6 address") from None
        return inside, rest[1:]
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise BadListenAddress(f"{text!r} is not HOST:PORT; use {EXAMPLES}")
    if ":" in host:
        raise BadListenAddress(f"{text!r}: an IPv6 address goes in brackets, as [::1]:9100")
    if not all(c.isascii() and (c.isalnum() or c in ".-_") for c in host):
        raise BadListenAddress(f"host {host!r} is not a name or an IP address")
    return host, port_text
