"""The exception tree of the end-to-end crypto.

    CryptoError              anything the crypto refuses
    ├── UntrustedBundle      a fetched bundle that must not be used (bad signature or key)
    ├── DecryptError         a body that does not decrypt (tampered, replayed, unknown keys)
    │   └── SessionMismatch  a type-1 body that starts another session than this one
    └── StateError           serialised keys or session state that cannot be read back

Messages say what failed, never which secret value was involved.
"""

from __future__ import annotations

__all__ = ["CryptoError", "DecryptError", "SessionMismatch", "StateError", "UntrustedBundle"]


class CryptoError(Exception):
    """Base of every refusal by the end-to-end crypto."""


class UntrustedBundle(CryptoError):
    """A remote pre-key bundle failed its checks; no session may be built from it."""


class DecryptError(CryptoError):
    """A message body could not be decrypted; the session it was tried on is unchanged."""


class SessionMismatch(DecryptError):
    """A type-1 body carries another base key: it belongs to a new session (``accept_session``)."""


class StateError(CryptoError):
    """Serialised device keys or session state are malformed or of an unknown version."""
