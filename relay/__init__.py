"""The relay server: connections, routing, delivery, operations endpoints, command line."""

from relay.openssl_paths import load_cryptography

load_cryptography()  # first, before anything else loads OpenSSL (see relay.openssl_paths)
