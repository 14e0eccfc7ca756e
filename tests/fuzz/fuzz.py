"""Run one target under atheris: `python -m tests.fuzz.fuzz TARGET [libFuzzer options] [DIR...]`.

Our packages (and tomllib, which the config loader hands its input to) are instrumented for
coverage; the target's `check` is the libFuzzer test function.
"""

from __future__ import annotations

import importlib
import sys

import atheris

from tests.fuzz import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.fuzz {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = sys.argv[1]
    with atheris.instrument_imports(include=["protocol", "relay", "tomllib"]):
        module = importlib.import_module(f"tests.fuzz.{target}")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], module.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
