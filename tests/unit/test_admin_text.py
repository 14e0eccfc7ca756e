"""The admin commands' pure parts: the stats table when the node registry did not answer or
the answer is not a relay's, and the spellings of a user id `relay devices` accepts."""

from __future__ import annotations

import pytest

from relay.admin import AdminError, canonical_user, render_stats

USER = "5d0c2c43-8f1e-4a55-9c63-0b1c8e0f1a2b"


def test_stats_say_when_the_node_list_is_this_node_alone():
    text = render_stats(
        {
            "uptime_s": 1.5,
            "nodes": [{"id": "a", "connections": 3, "heartbeat_age_s": 0.0, "this_node": True}],
            "nodes_available": False,
        }
    )
    lines = text.splitlines()
    start = lines.index("nodes (1)")
    assert lines[start + 1] == "(the node registry did not answer: this node only)"
    assert lines[start + 2].split()[:2] == ["node", "connections"]
    assert lines[start + 3].split() == ["a", "3", "0.0", "this", "node"]


def test_stats_of_an_unexpected_node_list_stay_a_flat_table():
    text = render_stats({"nodes": ["a", "b"], "store": "x"})
    assert text.splitlines() == ['nodes  ["a","b"]', "store  x"]


@pytest.mark.parametrize(
    "spelling",
    [USER, USER.upper(), USER.replace("-", ""), "{" + USER + "}", "urn:uuid:" + USER, f" {USER}\n"],
)
def test_user_spellings(spelling):
    assert canonical_user(spelling) == USER


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-uuid",
        USER[:-1],
        USER + "0",
        "0x" + "a" * 30,
        "a" * 31 + "_",
        "{" + USER,
        "9" * 65,
    ],
)
def test_bad_user_ids_are_refused_with_exit_code_2(bad):
    with pytest.raises(AdminError) as refused:
        canonical_user(bad)
    assert refused.value.code == 2
    assert str(refused.value).startswith("USER must be a UUID such as ")
    assert "\n" not in str(refused.value)
