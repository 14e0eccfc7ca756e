"""Target `signatures`: Ed25519 and XEdDSA verification, the signed payloads, bundle checks.

Input: one mode byte, then the mode's choices (see `Reader`).

- mode 0, random: a fuzzed scheme, key, signature and message; `verify_signature` returns a
  bool and never raises.
- mode 1, tamper: a key pair from a fuzzed seed signs a fuzzed message; the signature
  verifies, and flipping bits of the key, the message or the signature makes it fail, unless
  the flipped key is the same XEdDSA key (bit 255 of `u` and `u >= p` are read as libsignal
  reads them, `identity_key_x25519` canonical form).
- mode 2, payloads: a signature over one signed payload (register, link, auth) of fuzzed
  fields never verifies for a payload of another kind or other fields; malformed fields raise
  only the documented `ValueError`/`OverflowError`.
- mode 3, bundle: a genuine pre-key bundle with one key or signature tampered is refused with
  `UntrustedBundle` by `verify_bundle`, the client's check before X3DH/PQXDH.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterator

from protocol.crypto.bundle import RemoteBundle, verify_bundle
from protocol.crypto.device_keys import DeviceKeys
from protocol.crypto.errors import UntrustedBundle
from protocol.payloads import auth_payload, link_payload, register_payload
from protocol.signatures import IdentityKeyPair, KeyScheme, verify_signature
from tests.fuzz.reader import Reader
from tests.fuzz.wire import bundle_of

SCHEMES = (KeyScheme.ED25519, KeyScheme.XEDDSA)
_P = 2**255 - 19


def same_key(scheme: KeyScheme, a: bytes, b: bytes) -> bool:
    """Whether two identity keys are one key as the verifier reads them."""
    if a == b:
        return True
    if scheme is not KeyScheme.XEDDSA or len(a) != 33 or len(b) != 33 or a[0] != b[0]:
        return False
    mask = (1 << 255) - 1
    return (int.from_bytes(a[1:], "little") & mask) % _P == (
        int.from_bytes(b[1:], "little") & mask
    ) % _P


def _flip(data: bytes, position: int, mask: int) -> bytes:
    """`data` with the bits of `mask` (non-zero) flipped at `position`; a byte more if empty."""
    if not data:
        return bytes([mask])
    changed = bytearray(data)
    changed[position % len(data)] ^= mask
    return bytes(changed)


def _random(r: Reader) -> None:
    scheme = SCHEMES[r.byte() & 1]
    key = r.take(r.byte() % 36)
    signature = r.take(r.byte() % 68)
    result = verify_signature(scheme, key, r.rest(), signature)
    assert isinstance(result, bool)


def _tamper(r: Reader) -> None:
    pair = IdentityKeyPair.from_private_bytes(SCHEMES[r.byte() & 1], r.take(32))
    what, position, mask = r.byte() % 3, r.u16(), r.byte() | 1
    message = r.rest()
    key, signature = pair.public_key, pair.sign(message)
    assert verify_signature(pair.scheme, key, message, signature), "a fresh signature fails"
    if what == 0:
        key = _flip(key, position, mask)
        if same_key(pair.scheme, key, pair.public_key):
            return
    elif what == 1:
        message = _flip(message, position, mask)
    else:
        signature = _flip(signature, position, mask)
    assert not verify_signature(pair.scheme, key, message, signature), "tampered input verifies"


def _payload(kind: int, r: Reader) -> bytes:
    """One signed payload of fuzzed fields; raises what `protocol.payloads` documents."""
    if kind == 0:
        return register_payload(r.take(r.byte() % 40), r.take(r.byte() % 40))
    if kind == 1:
        return link_payload(r.take(r.byte() % 40).decode("latin-1"), r.take(r.byte() % 40))
    return auth_payload(
        r.take(r.byte() % 40),
        r.take(r.byte() % 40).decode("latin-1"),
        int.from_bytes(r.take(5), "big", signed=True),
    )


def _payloads(r: Reader) -> None:
    pair = IdentityKeyPair.from_private_bytes(SCHEMES[r.byte() & 1], r.take(32))
    first_kind, second_kind = r.byte() % 3, r.byte() % 3
    try:
        first = _payload(first_kind, r)
        second = _payload(second_kind, r)
    except (ValueError, OverflowError):
        return
    if first_kind != second_kind:
        assert first != second, "payloads of two kinds share their bytes"
    if first == second:
        return
    signature = pair.sign(first)
    assert not verify_signature(pair.scheme, pair.public_key, second, signature)


@functools.cache
def genuine_bundle() -> RemoteBundle:
    """A bundle of a real device (made once: ML-KEM key generation is the slow part)."""
    keys = DeviceKeys.generate(KeyScheme.XEDDSA, prekeys=1, pq_prekeys=1, now_ms=0)
    return bundle_of(keys)


_SIGNED_FIELDS = (
    "identity_key",
    "signed_prekey",
    "signed_prekey_signature",
    "pq_prekey",
    "pq_prekey_signature",
)


def _bundle(r: Reader) -> None:
    bundle = genuine_bundle()
    verify_bundle(bundle)
    name = _SIGNED_FIELDS[r.byte() % len(_SIGNED_FIELDS)]
    original: bytes = getattr(bundle, name)
    changed = _flip(original, r.u16(), r.byte() | 1)
    if name == "identity_key" and same_key(bundle.key_scheme, changed, original):
        return
    try:
        verify_bundle(dataclasses.replace(bundle, **{name: changed}))
    except UntrustedBundle:
        return
    raise AssertionError(f"a bundle with a tampered {name} is trusted")


MODES = (_random, _tamper, _payloads, _bundle)


def check(data: bytes) -> None:
    r = Reader(data)
    MODES[r.byte() % len(MODES)](r)


USER = str(uuid.UUID(int=0x0123_4567_89AB_CDEF_0123_4567_89AB_CDEF)).encode()


def seeds() -> Iterator[bytes]:
    seed = bytes(range(32))
    for scheme in (0, 1):
        pair = IdentityKeyPair.from_private_bytes(SCHEMES[scheme], seed)
        message = b"relay-auth-v1\x00" + bytes(32)
        signature = pair.sign(message)
        key = pair.public_key
        yield bytes([0, scheme, len(key), len(signature)]) + key + signature + message
        yield bytes([0, scheme, len(key), 10]) + key + signature[:10] + message
        for what in range(3):
            for position, mask in ((0, 1), (31, 0x80), (63, 0x80), (32, 0x40)):
                yield bytes([1, scheme]) + seed + bytes([what, 0, position, mask]) + message
        for first, second in ((0, 1), (1, 2), (2, 0), (2, 2), (0, 0)):
            fields = {
                0: bytes([32]) + bytes(32) + bytes([33]) + key[:33].ljust(33, b"\x05"),
                1: bytes([len(USER)]) + USER + bytes([33]) + key.ljust(33, b"\x05"),
                2: bytes([32]) + bytes(32) + bytes([len(USER)]) + USER + b"\x00\x00\x00\x00\x02",
            }
            yield (
                bytes([2, scheme]) + seed + bytes([first, second]) + fields[first] + fields[second]
            )
    for field in range(len(_SIGNED_FIELDS)):
        for position, mask in ((0, 1), (5, 0x10), (32, 0x80)):
            yield bytes([3, field, 0, position, mask])
