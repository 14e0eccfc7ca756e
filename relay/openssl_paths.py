"""The OpenSSL inside the `cryptography` package loaded without its AVX-512 code paths.

Why: encryption at rest seals every stored envelope and opens every drained one with
ChaCha20-Poly1305 from that library. On a processor with AVX-512 its 512-bit routines are
chosen, and in the relay, where each call of a microsecond or two sits between stretches of
interpreter code, they cost more than they do in a loop of calls alone. Measured side by
side on the reference machine (a Xeon with AVX-512; docs/benchmarks.md, "OpenSSL without
its AVX-512 paths"): relay CPU per stored 1 KiB message 0.96 of what it was, per drained one
0.93-0.98; at 16 KiB 0.95 and 1.03-1.04.

How: OpenSSL reads the variable OPENSSL_ia32cap once, when the library is loaded, and clears
the capability bits it names (`:~0x10000` is bit 16 of the second word, AVX512F; see
OpenSSL's OPENSSL_ia32cap(3)). So the variable is set while the package's binding is
imported, here, and put back as it was: the `ssl` module's OpenSSL (TLS), which loads later,
and child processes see the environment as the operator left it. An operator who sets the
variable gets exactly what they set, for both libraries. This must run before anything
imports `cryptography`: the `relay` package runs it first (relay/__init__.py).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Final

__all__ = ["BINDING", "NO_AVX512", "VARIABLE", "load_cryptography"]

VARIABLE: Final = "OPENSSL_ia32cap"
NO_AVX512: Final = ":~0x10000"  # the extended word (CPUID leaf 7 EBX) without AVX512F
BINDING: Final = "cryptography.hazmat.bindings._rust"  # the extension that holds OpenSSL


def load_cryptography() -> bool:
    """Loads the binding with the mask unless the operator set the variable or the binding
    is loaded already (then its paths are chosen). Whether the mask was applied."""
    if VARIABLE in os.environ or BINDING in sys.modules:
        return False
    os.environ[VARIABLE] = NO_AVX512
    try:
        importlib.import_module(BINDING)
    finally:
        del os.environ[VARIABLE]
    return True
