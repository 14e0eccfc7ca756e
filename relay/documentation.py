"""`relay docs [TOPIC]`: the README and the docs pages, shipped inside the package.

The project has no public site, so the pages travel with the code: `relay/README.md` and
`relay/docs` are links to the repository's `README.md` and `docs/` that the build follows,
which puts the pages into the wheel as package data. A pip user reads them offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

README_TOPIC = "readme"


@dataclass(frozen=True, slots=True)
class Page:
    topic: str  # `readme`, or a docs page's file name without `.md`
    title: str  # the page's first heading
    file: Traversable


def pages() -> list[Page]:
    """The README first, then every docs page by name."""
    root = files("relay")
    found = [_page(README_TOPIC, root / "README.md")]
    docs = root / "docs"
    if docs.is_dir():
        found += sorted(
            (
                _page(entry.name.removesuffix(".md"), entry)
                for entry in docs.iterdir()
                if entry.name.endswith(".md") and entry.is_file()
            ),
            key=lambda page: page.topic,
        )
    return [page for page in found if page.file.is_file()]


def _page(topic: str, file: Traversable) -> Page:
    title = topic
    if file.is_file():
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                break
    return Page(topic=topic, title=title, file=file)


def render_index(found: list[Page]) -> str:
    """One line a page, then how to read one."""
    if not found:
        return "relay: this installation carries no documentation pages"
    width = max(len(page.topic) for page in found)
    lines = ["Relay's documentation, installed with the package:", ""]
    lines += [f"  {page.topic:<{width}}  {page.title}  ({page.file})" for page in found]
    lines += ["", "Print one with `relay docs TOPIC`, e.g. `relay docs operations | less`."]
    return "\n".join(lines)


def find_page(found: list[Page], topic: str) -> Page | None:
    wanted = topic.lower().removesuffix(".md")
    return next((page for page in found if page.topic == wanted), None)
