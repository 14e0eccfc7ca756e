"""The landing page of `GET /`: its facts escaped, its links, nothing fetched from elsewhere;
and the `since` query of `/v1/history`, bounded and refused precisely."""

from __future__ import annotations

import importlib.metadata
from html.parser import HTMLParser

import pytest

from protocol.version import package_version
from relay.http import MAX_METRIC_NAMES, BadQuery, parse_metric_names, parse_since
from relay.landing import LINKS, LandingFacts, render_landing, store_label


class PageParts(HTMLParser):
    """The links, the resources the page would load, and the text of each `id`ed element."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.loads: list[str] = []
        self.by_id: dict[str, str] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "a" and named.get("href"):
            self.links.append(str(named["href"]))
        for attr in ("src", "srcset"):
            if named.get(attr):
                self.loads.append(str(named[attr]))
        if tag == "link":
            self.loads.append(str(named.get("href")))
        self._current = named.get("id")

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self.by_id[self._current] = self.by_id.get(self._current, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._current = None


def parse(page: bytes) -> PageParts:
    parts = PageParts()
    parts.feed(page.decode("utf-8"))
    return parts


def test_the_page_names_the_relay_and_links_the_operations_paths() -> None:
    page = render_landing(LandingFacts(version="1.2.3", node_id="node-a", store="embedded"))
    parts = parse(page)
    assert parts.by_id == {"version": "1.2.3", "node": "node-a", "store": "embedded"}
    assert parts.links == [path for path, _ in LINKS]
    assert {"/dashboard", "/healthz", "/readyz", "/metrics", "/v1/stats"} <= set(parts.links)
    assert parts.loads == []
    assert b"http://" not in page and b"https://" not in page and b"@import" not in page


def test_every_value_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    page = render_landing(LandingFacts(version=hostile, node_id=hostile, store=hostile))
    assert b"<script>" not in page
    parts = parse(page)
    assert parts.by_id["version"] == parts.by_id["node"] == parts.by_id["store"] == hostile


def test_the_version_is_the_installed_distribution() -> None:
    assert package_version() == importlib.metadata.version("relay")


def test_the_store_label_names_the_kind_only() -> None:
    assert store_label(production=True) == "PostgreSQL + Redis"
    assert store_label(production=False) == "embedded (SQLite)"


@pytest.mark.parametrize(
    ("query", "since"),
    [("", None), ("since=0", 0), ("since=1700000000000", 1_700_000_000_000)],
)
def test_since_is_read_from_the_query(query: str, since: int | None) -> None:
    assert parse_since(query) == since


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=abc", "whole number of milliseconds"),
        ("since=-5", "whole number of milliseconds"),
        ("since=", "whole number of milliseconds"),
        ("since=1.5", "whole number of milliseconds"),
        ("since=١٢٣", "whole number of milliseconds"),  # non-ASCII digits
        ("since=12345678901234567", "whole number of milliseconds"),
        ("since=1&since=2", "more than once"),
        ("from=1", "unknown parameter 'from'"),
        ("since", "malformed query string"),
        ("since=" + "1" * 80, "longer than 64 characters"),
    ],
)
def test_a_bad_since_is_refused_by_name(query: str, message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        parse_since(query)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("", None),
        ("name[]=process_cpu_seconds_total", ["process_cpu_seconds_total"]),
        ("name%5B%5D=a_b&name[]=c:d", ["a_b", "c:d"]),
    ],
)
def test_metric_names_are_read_from_the_query(query: str, names: list[str] | None) -> None:
    assert parse_metric_names(query) == names


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("name[]=", "is not a metric name"),
        ("name[]=9lives", "is not a metric name"),
        ("name[]=a%20b", "is not a metric name"),
        ("name[]=" + "a" * 201, "is not a metric name"),
        ("names=a", "unknown parameter 'names'"),
        ("name[]", "malformed query string"),
        ("&".join(["name[]=a"] * (MAX_METRIC_NAMES + 1)), f"more than {MAX_METRIC_NAMES} names"),
        ("name[]=" + "a" * 2100, "longer than 2048 characters"),
    ],
)
def test_a_bad_metrics_query_is_refused_by_name(query: str, message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        parse_metric_names(query)
