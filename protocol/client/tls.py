"""The TLS context a client verifies the relay with: the system's CAs, or a CA file of one's own.

A relay with a certificate from a public CA needs nothing: `wss://` URLs use the system's
trust store. A private CA (a test relay, an internal deployment) is named by its PEM file.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from websockets.uri import parse_uri

from protocol.client.errors import TlsSetupError


def tls_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying client context, TLS 1.2 or later, trusting `ca_file` instead of the
    system's CAs when it is given; raises TlsSetupError when the file cannot be used."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if ca_file is None else str(ca_file)
        )
    except ssl.SSLError:
        raise TlsSetupError(f"CA file {ca_file}: no PEM certificate in it") from None
    except OSError as exc:
        raise TlsSetupError(f"CA file {ca_file}: cannot read it: {exc.strerror}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def context_for(url: str, ca_file: str | Path | None) -> ssl.SSLContext | None:
    """The context to connect to `url` with: None for ws://, and for wss:// without a CA file
    (the default verifying context); raises TlsSetupError for a CA file with a ws:// URL."""
    secure = parse_uri(url).secure
    if ca_file is None:
        return None
    if not secure:
        raise TlsSetupError(f"a CA file is for wss:// URLs; {url} is not one")
    return tls_context(ca_file)
