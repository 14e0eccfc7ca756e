"""Rewrite the seed corpus: `python -m tests.fuzz.seeds` (one file per seed, named by hash)."""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path

from tests.fuzz import TARGETS

CORPUS = Path(__file__).parent / "corpus"


def main() -> None:
    for target in TARGETS:
        module = importlib.import_module(f"tests.fuzz.{target}")
        directory = CORPUS / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for seed in module.seeds():
            (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        print(f"{target}: {len(list(directory.iterdir()))} seeds")


if __name__ == "__main__":
    main()
