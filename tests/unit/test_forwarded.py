"""The client address behind trusted proxies: X-Forwarded-For read from the right."""

from __future__ import annotations

import ipaddress

import pytest

from relay.config import ConfigError, Settings
from relay.forwarded import TrustedProxies

PROXIES = TrustedProxies(
    [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ]
)


@pytest.mark.parametrize(
    ("peer", "headers", "counted"),
    [
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        # the left part is the client's own text: never read past the first untrusted hop
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["198.51.100.7, 10.1.2.3"], "198.51.100.7"),
        ("127.0.0.1", ["198.51.100.7", "10.1.2.3"], "198.51.100.7"),  # two headers, in order
        ("127.0.0.1", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # all trusted: the left-most
        ("127.0.0.1", ["garbage, 10.1.2.3"], "10.1.2.3"),  # the walk stops at the last good hop
        ("127.0.0.1", ["  2001:db8::1 "], "2001:db8::1"),
        ("127.0.0.1", ["::ffff:198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", [], "127.0.0.1"),
        ("fd00::5", ["2001:db8::1"], "2001:db8::1"),
        ("::ffff:127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("192.0.2.5", ["198.51.100.7"], "192.0.2.5"),  # not a trusted peer: header ignored
        ("?", ["198.51.100.7"], "?"),
    ],
)
def test_client_address(peer: str, headers: list[str], counted: str) -> None:
    assert PROXIES.client_address(peer, headers) == counted


def test_no_trusted_proxies_is_false() -> None:
    assert not TrustedProxies([])
    assert PROXIES


def test_settings_parse_trusted_proxies() -> None:
    settings = Settings(trusted_proxies=" 127.0.0.1 , 10.0.0.0/8,fd00::/8")
    assert settings.trusted_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert Settings().trusted_networks == ()


@pytest.mark.parametrize(
    "value", ["", "10.0.0.1/8", "example.com", "10.0.0.0/8,", ",".join(["10.0.0.1"] * 257)]
)
def test_bad_trusted_proxies(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(trusted_proxies=value)
    assert caught.value.setting == "trusted_proxies"
    assert str(caught.value).startswith("trusted_proxies")
