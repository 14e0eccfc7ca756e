"""Target `config`: the relay's TOML config file loader (`relay.config_sources`).

Input: the bytes of a config file, loaded as `relay serve --config FILE` loads it, with no
flags or `RELAY_*` variables. Contract: a bad file is `ConfigError` and nothing else (the
operator sees one named message, no traceback); a file that loads gives settings whose
numbers are finite and fit TOML's 64-bit integers.
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from relay.config import ConfigError
from relay.config_sources import load_settings

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


@functools.cache
def _scratch() -> tempfile.TemporaryDirectory[str]:
    """One directory for the whole run (removed at exit); its file is rewritten per input."""
    return tempfile.TemporaryDirectory(prefix="relay-fuzz-config-")


def check(data: bytes) -> None:
    path = Path(_scratch().name) / "relay.toml"
    path.write_bytes(data)
    try:
        loaded = load_settings(argparse.Namespace(config=str(path)), {})
    except ConfigError as exc:
        assert str(exc), "a ConfigError without a message"
        return
    for f in fields(loaded.settings):
        value = getattr(loaded.settings, f.name)
        if isinstance(value, float):
            assert math.isfinite(value), f"{f.name} = {value!r} accepted"
        elif isinstance(value, int) and not isinstance(value, bool):
            assert I64_MIN <= value <= I64_MAX, f"{f.name} = {value!r} accepted"


def seeds() -> Iterator[bytes]:
    yield b""
    yield b'host = "0.0.0.0"\nport = 8765\n'
    yield b'data_dir = "/var/lib/relay"\nmax_body_bytes = 262144\nmax_frame_bytes = 1048576\n'
    yield b'database_url = "postgresql://relay@127.0.0.1/relay"\nredis_url = "redis://127.0.0.1"\n'
    yield b'log_level = "debug"\nlog_format = "json"\nnode_id = "node-1"\n'
    yield b'tls_cert = "cert.pem"\ntls_key = "key.pem"\n'
    yield b'trusted_proxies = "10.0.0.0/8, ::1/128"\nregistration_token = "s3cret"\n'
    yield b"handshake_timeout = 2.5\nretention = 86400\nclock_skew = 1e3\n"
    yield b"rate_requests = 10.0\nrate_requests_burst = 20\nmigrate = true\n"
    yield b"max_devices = 6\ndelivery_window = 256\npresence_ttl = 30.0\n"
    yield b"port = 70000\n"
    yield b'port = "8765"\n'
    yield b"prot = 1\n"
    yield b"handshake_timeout = nan\n"
    yield b"ack_timeout = inf\n"
    yield b"max_body_bytes = 2048\nmax_frame_bytes = 1024\n"
    yield b'trusted_proxies = "not-a-network"\n'
    yield b"[table]\nkey = 1\n"
    yield b"port = [1, 2]\n"
    yield b'host = """\nmulti\n"""\n'
    yield b"port = 0x1F90\nmax_devices = 0o7\n"
    yield b"\xff\xfe\x00"
    yield b'log_level = "INFO"\nshutdown_timeout = 1979-05-27T07:32:00Z\n'
