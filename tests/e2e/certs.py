"""Throwaway certificate authorities and server certificates for the TLS tests.

Each `Authority` is a fresh self-signed CA (an EC P-256 key, valid for a day); `issue`
writes a server certificate for 127.0.0.1 and localhost, signed by it, as PEM files.
Nothing here is kept beyond the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from .support import RelayProcess

VALID_FOR = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ServerFiles:
    cert: Path
    key: Path
    serial: int


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _replace(path: Path, data: bytes) -> None:
    """Write next to `path`, then rename over it: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class Authority:
    """A certificate authority of one test."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"relay test CA {name}")])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / f"ca-{name}.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert: Path, key: Path) -> ServerFiles:
        """A server certificate for 127.0.0.1 and localhost, written to `cert` and `key`."""
        server_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.certificate.subject)
            .public_key(server_key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        _replace(key, _pem_key(server_key))
        _replace(cert, certificate.public_bytes(serialization.Encoding.PEM))
        return ServerFiles(cert=cert, key=key, serial=serial)


def serial_of(der: bytes) -> int:
    """The serial number of a DER certificate (what `getpeercert(binary_form=True)` gives)."""
    return x509.load_der_x509_certificate(der).serial_number


@contextlib.contextmanager
def relay_with_tls(folder: Path, ca: Authority) -> Iterator[RelayProcess]:
    """A relay serving wss:// with a certificate from `ca`; stopped (and checked) after."""
    from .support import RelayProcess, stop_relays

    files = ca.issue(folder / "tls" / "cert.pem", folder / "tls" / "key.pem")
    relay = RelayProcess(folder / "relay", {"tls_cert": files.cert, "tls_key": files.key})
    relay.start()
    yield relay
    problems = stop_relays([relay])
    assert not problems, problems
