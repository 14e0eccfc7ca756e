"""relay.registrations: which bucket a client address's registrations count against."""

from __future__ import annotations

from relay.registrations import budget_key


def test_ipv4_address_is_its_own_bucket() -> None:
    assert budget_key("198.51.100.7") == "register:198.51.100.7"
    assert budget_key("198.51.100.7") != budget_key("198.51.100.8")


def test_ipv6_addresses_count_by_their_64() -> None:
    assert budget_key("2001:db8:1:2::1") == "register:2001:db8:1:2::/64"
    assert budget_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == budget_key("2001:db8:1:2::1")
    assert budget_key("2001:db8:1:3::1") != budget_key("2001:db8:1:2::1")


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    assert budget_key("::ffff:198.51.100.7") == budget_key("198.51.100.7")


def test_text_that_is_no_address_is_kept_as_is() -> None:
    assert budget_key("?") == "register:?"
