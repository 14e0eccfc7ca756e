"""The `cryptography` package's OpenSSL is loaded with AVX-512 masked, the environment is put
back, and an operator's own OPENSSL_ia32cap is kept. Each case runs in a fresh interpreter:
the mask can only act when the library is loaded, once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from relay.openssl_paths import BINDING, NO_AVX512, VARIABLE

ROOT = Path(__file__).resolve().parents[2]

# Loads relay/openssl_paths.py as a module of its own (not through the `relay` package,
# whose import applies the mask already), records the variable as the binding's import
# sees it, and reports what the call left behind.
_RECORDING = """
import importlib.abc, importlib.util, json, os, sys

seen = []

class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {binding!r}:
            seen.append(os.environ.get({variable!r}))
        return None

sys.meta_path.insert(0, Recorder())
spec = importlib.util.spec_from_file_location("paths", {path!r})
paths = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paths)
applied = paths.load_cryptography()
print(json.dumps({{
    "applied": applied,
    "seen": seen,
    "after": os.environ.get({variable!r}),
    "loaded": {binding!r} in sys.modules,
    "again": paths.load_cryptography(),
}}))
"""


def _run(script: str, environ: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _recording() -> str:
    return _RECORDING.format(
        binding=BINDING, variable=VARIABLE, path=str(ROOT / "relay" / "openssl_paths.py")
    )


def _environ(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != VARIABLE}
    return {**environ, "PYTHONPATH": str(ROOT), **extra}


def test_the_binding_loads_with_the_mask_and_the_environment_is_put_back() -> None:
    result = _run(_recording(), _environ())
    assert result == {
        "applied": True,
        "seen": [NO_AVX512],
        "after": None,
        "loaded": True,
        "again": False,  # once loaded, the library keeps the paths it chose
    }


def test_an_operators_own_setting_is_kept() -> None:
    result = _run(_recording(), _environ(**{VARIABLE: ":~0x20"}))
    assert result == {
        "applied": False,
        "seen": [],  # left to load later, with the operator's setting
        "after": ":~0x20",
        "loaded": False,
        "again": False,
    }


def test_importing_the_relay_package_loads_the_library_and_puts_the_environment_back() -> None:
    script = (
        "import json, os, sys, relay; print(json.dumps({"
        f"'after': os.environ.get({VARIABLE!r}), 'loaded': {BINDING!r} in sys.modules"
        "}))"
    )
    assert _run(script, _environ()) == {"after": None, "loaded": True}
