"""The installed package's version, for every command's `--version`.

It lives in `protocol` because `relay`, `relay-chat` and `relay-loadtest` all ship in the one
`relay` distribution, and the latter two must not import the server package.
"""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "relay"


def package_version() -> str:
    """The version recorded in the installed package metadata (pyproject.toml's `version`)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (the relay package is not installed)"


def version_line(prog: str) -> str:
    """What `PROG --version` prints: `relay 0.1.0`."""
    return f"{prog} {package_version()}"
