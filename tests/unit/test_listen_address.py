"""`--admin-listen HOST:PORT`: what parses, and the URL printed for it."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, Settings
from relay.listen_address import BadListenAddress, ListenAddress, parse_listen_address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9100", "127.0.0.1", 9100),
        ("localhost:0", "localhost", 0),
        ("admin.internal.example:65535", "admin.internal.example", 65535),
        ("[::1]:9100", "::1", 9100),
        ("[fe80::1%eth0]:1", "fe80::1%eth0", 1),
        ("0.0.0.0:80", "0.0.0.0", 80),
    ],
)
def test_host_and_port(text: str, host: str, port: int) -> None:
    assert parse_listen_address(text) == ListenAddress(host, port)


@pytest.mark.parametrize(
    "text", ["", "9100", "host:", "[::1]", "[::1]9100", "[::1]:-1", "h:+1", "h:1_0", "h:٣"]
)
def test_what_is_not_host_and_port(text: str) -> None:
    with pytest.raises(BadListenAddress):
        parse_listen_address(text)


def test_the_url_puts_an_ipv6_host_in_brackets_and_takes_the_bound_port() -> None:
    assert ListenAddress("::1", 0).url("http", 41234) == "http://[::1]:41234/"
    assert ListenAddress("127.0.0.1", 9100).url("https") == "https://127.0.0.1:9100/"


def test_settings_name_the_setting_that_failed() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(admin_listen="nope")
    assert caught.value.setting == "admin_listen"
    assert Settings(admin_listen="[::1]:0").admin_address == ListenAddress("::1", 0)
    assert Settings().admin_address is None
