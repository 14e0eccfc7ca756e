"""One frozen, validated settings object, built from flags with environment-variable fallbacks.

Every flag `--some-name` can also be given as `RELAY_SOME_NAME`; a flag wins
over the environment. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DAY = 86400.0


class ConfigError(ValueError):
    """A setting that cannot work, named so the operator can fix it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path("relay-data")
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "relay:"
    handshake_timeout: float = 10.0
    ack_timeout: float = 2.0
    backend_timeout: float = 2.0
    max_devices: int = 6
    registration_token: str | None = None
    clock_skew: float = 300.0
    replay_window: float = 7 * DAY
    retention: float = 30 * DAY
    max_body_bytes: int = 256 * 1024
    max_frame_bytes: int = 1024 * 1024
    delivery_window: int = 256
    prekey_low_water: int = 10
    max_stored_prekeys: int = 1000
    signed_prekey_rotation: float = 30 * DAY
    rate_requests: float = 1000.0
    rate_requests_burst: int = 2000
    rate_fetch_per_minute: int = 100
    rate_fetch_per_target: int = 10
    max_bad_frames: int = 100
    outbound_buffer_bytes: int = 4 * 1024 * 1024
    slow_reader_timeout: float = 5.0
    max_connections_per_address: int = 10_000
    purge_interval: float = 60.0
    shutdown_timeout: float = 10.0
    node_id: str | None = None

    def __post_init__(self) -> None:
        positive = (
            "handshake_timeout",
            "ack_timeout",
            "backend_timeout",
            "max_devices",
            "clock_skew",
            "replay_window",
            "retention",
            "max_body_bytes",
            "max_frame_bytes",
            "delivery_window",
            "max_stored_prekeys",
            "signed_prekey_rotation",
            "rate_requests",
            "rate_requests_burst",
            "rate_fetch_per_minute",
            "rate_fetch_per_target",
            "max_bad_frames",
            "outbound_buffer_bytes",
            "slow_reader_timeout",
            "max_connections_per_address",
            "purge_interval",
            "shutdown_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0, not {getattr(self, name)!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must lie in 0..65535, not {self.port}")
        if self.max_devices > 127:
            raise ConfigError("max_devices cannot exceed 127 (device numbers are 1..127)")
        if self.prekey_low_water < 0:
            raise ConfigError("prekey_low_water must be 0 or more")
        if self.max_body_bytes >= self.max_frame_bytes:
            raise ConfigError("max_body_bytes must be smaller than max_frame_bytes")
        if self.registration_token == "":
            raise ConfigError("registration_token must not be empty when set")
        if (self.database_url is None) != (self.redis_url is None):
            raise ConfigError(
                "database_url and redis_url go together: set both for production mode, "
                "or neither for the embedded store"
            )
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError("database_url must be a postgresql:// URL")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError("redis_url must be a redis://, rediss:// or unix:// URL")

    @property
    def production(self) -> bool:
        """PostgreSQL and Redis instead of the embedded store."""
        return self.database_url is not None

    @property
    def replay_pending_ttl(self) -> float:
        """How long a send may stay in flight before a retry may take its nonce over."""
        return self.ack_timeout + 4 * self.backend_timeout + 10.0


_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "port to listen on (0 picks a free one)",
    "data_dir": "directory of the embedded store",
    "database_url": "PostgreSQL URL (production mode, with --redis-url)",
    "redis_url": "Redis URL (production mode, with --database-url)",
    "redis_prefix": "prefix of every Redis key this relay writes",
    "handshake_timeout": "seconds a new connection has to authenticate",
    "ack_timeout": "seconds to wait for a connected device's ack before storing",
    "backend_timeout": "seconds a store call may take before it counts as unavailable",
    "max_devices": "active devices a user may have",
    "registration_token": "require this token to register a new user",
    "clock_skew": "seconds a send's ts may differ from server time",
    "replay_window": "seconds a message nonce stays used",
    "retention": "seconds a stored message is kept",
    "max_body_bytes": "largest message body",
    "max_frame_bytes": "largest WebSocket message; larger ones close with 1009",
    "delivery_window": "unacknowledged deliveries in flight per connection",
    "prekey_low_water": "one-time pre-key count below which keys.low is pushed",
    "max_stored_prekeys": "stored one-time pre-keys of one kind per device",
    "signed_prekey_rotation": "seconds after which a signed pre-key should be rotated",
    "rate_requests": "requests a second per device",
    "rate_requests_burst": "burst of requests per device",
    "rate_fetch_per_minute": "keys.fetch a minute per requesting device (and burst)",
    "rate_fetch_per_target": "keys.fetch per 10 minutes per (requesting device, user) (and burst)",
    "max_bad_frames": "bad frames allowed in a burst (refilled 1/s) before closing with 1008",
    "outbound_buffer_bytes": "bytes queued to a client before deliveries wait",
    "slow_reader_timeout": "seconds the outbound buffer may stay full before closing with 1013",
    "max_connections_per_address": "concurrent connections per client address",
    "purge_interval": "seconds between purges of expired messages",
    "shutdown_timeout": "seconds a graceful shutdown may take",
    "node_id": "name of this node among several sharing Redis (default: random)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return "RELAY_" + name.upper()


def _converter(default: Any) -> Callable[[str], Any]:
    if isinstance(default, bool):
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, Path):
        return Path
    return str


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay None so the environment can fill the gaps."""
    for f in fields(Settings):
        default = f.default
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=None,
            type=_converter(default) if default is not None else str,
            metavar=f.name.upper(),
            help=f"{_HELP.get(f.name, f.name)} (env {_env(f.name)}; default {default})",
        )


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Flags first, then RELAY_* variables, then the defaults; validated."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        given = getattr(args, f.name, None)
        if given is None and _env(f.name) in environ:
            raw = environ[_env(f.name)]
            try:
                given = _converter(f.default if f.default is not None else "")(raw)
            except ValueError as exc:
                raise ConfigError(f"{_env(f.name)}={raw!r} is not a valid {f.name}") from exc
        if given is not None:
            values[f.name] = given
    return Settings(**values)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="relay serve")
    add_settings_arguments(parser)
    return settings_from(parser.parse_args(list(argv)), os.environ if environ is None else environ)
