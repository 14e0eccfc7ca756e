"""TLS on the relay's own port: one server context, its certificate reloaded in place on SIGHUP.

websockets answers the WebSocket upgrade and the plain HTTP paths on the same socket, so one
context gives `wss://` and `https://` together. A reload calls `load_cert_chain` again on the
same context: handshakes after it present the new certificate, open connections keep theirs.
A pair that does not load (unreadable, not PEM, key and certificate not matching) is found on
a scratch context first, so a failed reload leaves the certificate being served untouched.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay.config import ConfigError

log = logging.getLogger("relay.tls")

# TLS 1.2 suites with forward secrecy and an AEAD cipher; every TLS 1.3 suite is such a one.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MAX_PEM_BYTES = 1024 * 1024


class CertificateError(ConfigError):
    """A certificate or key that cannot be served; names the setting, the file and why."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What an operator checks after a reload: which certificate, until when."""

    subject: str
    serial: int
    not_after: datetime.datetime

    @property
    def expired(self) -> bool:
        return self.not_after <= datetime.datetime.now(datetime.UTC)


def _read(path: Path, setting: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise CertificateError(
            f"{setting} {path}: cannot read it: {exc.strerror}", setting=setting
        ) from None
    if len(data) > MAX_PEM_BYTES:
        raise CertificateError(
            f"{setting} {path}: larger than {MAX_PEM_BYTES} bytes", setting=setting
        )
    return data


def check_pair(cert: Path, key: Path) -> CertificateInfo:
    """The first certificate of `cert`, once both files parse and the key matches it."""
    cert_pem, key_pem = _read(cert, "tls_cert"), _read(key, "tls_key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError(
            f"tls_cert {cert}: not a PEM certificate chain", setting="tls_cert"
        ) from None
    try:
        load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(
            f"tls_key {key}: the key is encrypted; the relay reads unencrypted keys only",
            setting="tls_key",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"tls_key {key}: not a PEM private key", setting="tls_key") from None
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:  # a subclass of OSError: first
        reason = (exc.reason or exc.strerror or str(exc)).lower().replace("_", " ")
        raise CertificateError(
            f"tls_key {key} does not go with tls_cert {cert}: {reason}",
            setting="tls_key",
            related=("tls_cert",),
        ) from None
    except OSError as exc:  # a file replaced between the reads above and this load
        raise CertificateError(
            f"tls_key {key} or tls_cert {cert}: cannot read it: {exc.strerror}",
            setting="tls_key",
            related=("tls_cert",),
        ) from None
    leaf = chain[0]
    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        serial=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
    )


def _no_password() -> bytes:
    """Never ask a terminal for a key's passphrase (OpenSSL's default)."""
    return b""


class ServerTls:
    """The relay's server context and the files it reloads from; use :meth:`load`."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self.context = context
        self.cert = cert
        self.key = key

    @classmethod
    def load(cls, cert: Path, key: Path) -> ServerTls:
        """TLS 1.2 or later, modern ciphers, the given pair; raises CertificateError."""
        info = check_pair(cert, key)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(MODERN_CIPHERS)
        context.load_cert_chain(cert, key, password=_no_password)
        _log_loaded("TLS certificate loaded", info)
        return cls(context, cert, key)

    def reload(self) -> bool:
        """Load the files again into the same context (SIGHUP); on failure keep the old pair."""
        try:
            info = check_pair(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key, password=_no_password)
        except (CertificateError, OSError, ssl.SSLError) as exc:
            log.error("TLS certificate reload failed, still serving the previous one: %s", exc)
            return False
        _log_loaded("TLS certificate reloaded", info)
        return True


def _log_loaded(message: str, info: CertificateInfo) -> None:
    fields = {
        "subject": info.subject,
        "serial": format(info.serial, "x"),
        "not_after": info.not_after.isoformat(),
    }
    log.info(message, extra={"fields": fields})
    if info.expired:
        log.warning("the TLS certificate has expired", extra={"fields": fields})
