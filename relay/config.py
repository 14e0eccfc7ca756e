"""One frozen, validated settings object: every setting, its default, its checks, its help.

Where the values come from (flags, environment, TOML file) is `relay.config_sources`.
Every check names the setting it failed on, so the loader can say where the value came from.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from protocol.frames import MAX_MULTI_DEVICES, MAX_MULTI_USERS
from relay.listen_address import BadListenAddress, ListenAddress, parse_listen_address

DAY = 86400.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
MAX_TRUSTED_PROXIES = 256
SECRET_SETTINGS = frozenset({"registration_token", "admin_token"})
MIN_ADMIN_TOKEN_CHARS = 16  # a token shorter than this is guessable
MAX_ADMIN_TOKEN_CHARS = 256
URL_SETTINGS = frozenset({"database_url", "database_read_url", "redis_url"})
# The settings of the commands that open the store without serving (`relay purge`, `relay
# devices`); every other setting, including any added later, is for `relay serve` only.
STORE_SETTINGS = frozenset(
    {
        "data_dir",
        "database_url",
        "database_read_url",
        "redis_url",
        "redis_prefix",
        "redis_cluster",
        "backend_timeout",
        "at_rest_encryption",
        "master_key_file",
        "data_key_rotation",
    }
)
# `relay purge` also deletes the key events older than the audit retention.
PURGE_SETTINGS = STORE_SETTINGS | {"audit_retention"}
# `relay migrate` touches PostgreSQL alone.
# ... and, when it encrypts a store holding clear data, the master key.
AT_REST_SETTINGS = frozenset({"at_rest_encryption", "master_key_file", "data_key_rotation"})
MIGRATE_SETTINGS = frozenset({"database_url"}) | AT_REST_SETTINGS
MASK = "***"
# `workers`: a count, or "auto" for one worker process a core this process may run on.
WorkerCount: TypeAlias = int | str
WORKERS_AUTO = "auto"
MAX_WORKERS = 64
# TOML's integer range; every integer setting must fit (a file, a variable or a flag).
INT_SETTING_RANGE = (-(2**63), 2**63 - 1)
# The settings that must be greater than 0.
POSITIVE_SETTINGS = (
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
    "ping_interval",
    "ping_timeout",
    "max_connections_per_address",
    "max_handshakes",
    "max_handshakes_per_address",
    "rate_prekeys_per_target",
    "max_stored_messages",
    "max_multi_users",
    "max_multi_devices",
    "purge_interval",
    "audit_retention",
    "data_key_rotation",
    "shutdown_timeout",
    "presence_ttl",
    "max_backup_bytes",
    "rate_backup_reads",
)


class ConfigError(ValueError):
    """A setting that cannot work, named so the operator can fix it."""

    def __init__(
        self, message: str, *, setting: str | None = None, related: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.related = related  # other settings the check involves


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path("relay-data")
    database_url: str | None = None
    database_read_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "relay:"
    redis_cluster: bool = False
    migrate: bool = False
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
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_connections_per_address: int = 10_000
    max_handshakes: int = 10_000
    max_handshakes_per_address: int = 1_000
    max_registrations_per_address: int = 20
    rate_prekeys_per_target: int = 50
    max_stored_messages: int = 10_000
    max_multi_users: int = 100
    max_multi_devices: int = 1000
    purge_interval: float = 60.0
    audit_retention: float = 90 * DAY
    at_rest_encryption: bool = True
    master_key_file: Path | None = None
    data_key_rotation: float = DAY
    shutdown_timeout: float = 10.0
    node_id: str | None = None
    workers: WorkerCount = 1
    presence_ttl: float = 30.0
    max_backup_bytes: int = 64 * 1024
    rate_backup_reads: int = 10
    log_level: str = "INFO"
    log_format: str = "text"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: str | None = None
    admin_listen: str | None = None
    admin_token: str | None = None

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_limits()
        self._check_words()
        self._check_urls()
        self._check_workers()
        self._check_tls()
        self._check_admin_token()
        self.admin_address  # noqa: B018  (raises ConfigError on a bad HOST:PORT)
        self.trusted_networks  # noqa: B018  (raises ConfigError on a bad CIDR)

    def _check_numbers(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number", setting=f.name)
            low, high = INT_SETTING_RANGE
            if type(value) is int and not low <= value <= high:
                raise ConfigError(f"{f.name} must fit in 64 bits (-2^63..2^63-1)", setting=f.name)
        for name in POSITIVE_SETTINGS:
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name} must be greater than 0, not {getattr(self, name)!r}", setting=name
                )

    def _check_limits(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must lie in 0..65535, not {self.port}", setting="port")
        if self.max_devices > 127:
            raise ConfigError(
                "max_devices cannot exceed 127 (device numbers are 1..127)", setting="max_devices"
            )
        if self.max_registrations_per_address < 0:
            raise ConfigError(
                "max_registrations_per_address must be 0 (no limit) or more",
                setting="max_registrations_per_address",
            )
        if self.prekey_low_water < 0:
            raise ConfigError("prekey_low_water must be 0 or more", setting="prekey_low_water")
        if self.max_multi_users > MAX_MULTI_USERS:
            raise ConfigError(
                f"max_multi_users cannot exceed {MAX_MULTI_USERS} (the wire's ceiling)",
                setting="max_multi_users",
            )
        if self.max_multi_devices > MAX_MULTI_DEVICES:
            raise ConfigError(
                f"max_multi_devices cannot exceed {MAX_MULTI_DEVICES} (the wire's ceiling)",
                setting="max_multi_devices",
            )
        if self.max_body_bytes >= self.max_frame_bytes:
            raise ConfigError(
                "max_body_bytes must be smaller than max_frame_bytes",
                setting="max_body_bytes",
                related=("max_frame_bytes",),
            )

    @property
    def backup_limit(self) -> int:
        """The largest key backup blob taken: max_backup_bytes, and no more than a message
        body may be (so lowering the frame and body limits never leaves a backup limit that
        a frame cannot carry, and an existing configuration keeps starting)."""
        return min(self.max_backup_bytes, self.max_body_bytes)

    def _check_words(self) -> None:
        """The settings that are words: host, token, log level and format, node id."""
        if not self.host:
            raise ConfigError("host must not be empty", setting="host")
        if self.registration_token == "":
            raise ConfigError(
                "registration_token must not be empty when set", setting="registration_token"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}",
                setting="log_level",
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}",
                setting="log_format",
            )
        if self.node_id is not None and not (
            0 < len(self.node_id) <= 64
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in self.node_id)
        ):
            raise ConfigError(
                "node_id must be 1-64 letters, digits, '.', '_' or '-'", setting="node_id"
            )

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "tls_cert and tls_key go together: set both to serve wss://, or neither",
                setting="tls_cert" if self.tls_cert is not None else "tls_key",
                related=("tls_key",) if self.tls_cert is not None else ("tls_cert",),
            )

    def _check_admin_token(self) -> None:
        token = self.admin_token
        if token is not None and not (
            MIN_ADMIN_TOKEN_CHARS <= len(token) <= MAX_ADMIN_TOKEN_CHARS
            and all("!" <= c <= "~" for c in token)
        ):
            raise ConfigError(
                f"admin_token must be {MIN_ADMIN_TOKEN_CHARS}-{MAX_ADMIN_TOKEN_CHARS} printable "
                "ASCII characters without spaces (e.g. `openssl rand -hex 32`)",
                setting="admin_token",
            )

    @property
    def admin_address(self) -> ListenAddress | None:
        """Where the operations endpoints are served apart, parsed from `admin_listen`; None:
        on the public port with the WebSocket."""
        if self.admin_listen is None:
            return None
        try:
            return parse_listen_address(self.admin_listen)
        except BadListenAddress as exc:
            raise ConfigError(f"admin_listen: {exc}", setting="admin_listen") from None

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The proxies whose X-Forwarded-For is believed, parsed from `trusted_proxies`."""
        if self.trusted_proxies is None:
            return ()
        items = [item.strip() for item in self.trusted_proxies.split(",")]
        if len(items) > MAX_TRUSTED_PROXIES:
            raise ConfigError(
                f"trusted_proxies lists more than {MAX_TRUSTED_PROXIES} networks",
                setting="trusted_proxies",
            )
        networks = []
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item))
            except ValueError as exc:
                raise ConfigError(f"trusted_proxies: {exc}", setting="trusted_proxies") from None
        return tuple(networks)

    def _check_urls(self) -> None:
        if (self.database_url is None) != (self.redis_url is None):
            raise ConfigError(
                "database_url and redis_url go together: set both for production mode, "
                "or neither for the embedded store",
                setting="database_url" if self.database_url is not None else "redis_url",
                related=("redis_url",) if self.database_url is not None else ("database_url",),
            )
        if self.database_url is not None:
            check_database_url(self.database_url)
        if self.database_read_url is not None:
            if self.database_url is None:
                raise ConfigError(
                    "database_read_url needs database_url (the primary it replicates)",
                    setting="database_read_url",
                    related=("database_url",),
                )
            _check_url("database_read_url", self.database_read_url, ("postgresql", "postgres"))
        if self.redis_url is not None:
            _check_url("redis_url", self.redis_url, ("redis", "rediss", "unix"))
        if self.redis_cluster:
            if self.redis_url is None:
                raise ConfigError(
                    "redis_cluster needs redis_url (a seed node of the cluster)",
                    setting="redis_cluster",
                    related=("redis_url",),
                )
            if self.redis_url.startswith("unix"):
                raise ConfigError(
                    "redis_cluster needs a redis:// or rediss:// redis_url, not a socket",
                    setting="redis_cluster",
                    related=("redis_url",),
                )
            if "{" in self.redis_prefix or "}" in self.redis_prefix:
                raise ConfigError(
                    "redis_prefix must not hold '{' or '}' with redis_cluster (hash tags)",
                    setting="redis_prefix",
                    related=("redis_cluster",),
                )

    def _check_workers(self) -> None:
        """A count or "auto"; several only over the production store, and with room for the
        per-worker node ids and admin ports derived from `node_id` and `admin_listen`."""
        given = self.workers
        if not ((type(given) is int and 1 <= given <= MAX_WORKERS) or given == WORKERS_AUTO):
            raise ConfigError(
                f"workers must be a whole number 1..{MAX_WORKERS} or {WORKERS_AUTO!r} "
                f"(one a core), not {given!r}",
                setting="workers",
            )
        count = self.worker_count
        if count == 1:
            return
        shown = f"{count}" if given == count else f"{given} ({count})"
        if not self.production:
            raise ConfigError(
                f"workers {shown} needs the production store (database_url and redis_url): "
                "the embedded store is single-process",
                setting="workers",
                related=("database_url",),
            )
        if self.node_id is not None and len(self.node_id) + len(f"-w{count}") > 64:
            raise ConfigError(
                f"node_id must be at most {64 - len(f'-w{count}')} characters with "
                f"workers {shown} (each worker is NODE_ID-wN)",
                setting="node_id",
                related=("workers",),
            )
        admin = self.admin_address
        if admin is not None and admin.port != 0 and admin.port + count - 1 > 65535:
            raise ConfigError(
                f"admin_listen port {admin.port} leaves no room for {count} workers "
                "(worker N listens on the port + N - 1)",
                setting="admin_listen",
                related=("workers",),
            )

    @property
    def worker_count(self) -> int:
        """How many worker processes `relay serve` runs: `workers`, or with "auto" the cores
        this process may run on (at most MAX_WORKERS)."""
        if isinstance(self.workers, int):
            return self.workers
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(1, min(cores, MAX_WORKERS))

    @property
    def production(self) -> bool:
        """PostgreSQL and Redis instead of the embedded store."""
        return self.database_url is not None

    def audit_cutoff_ms(self, now_ms: int) -> int:
        """Key events dated before this are past the audit retention (the purge deletes them)."""
        return now_ms - round(self.audit_retention * 1000)

    @property
    def replay_pending_ttl(self) -> float:
        """How long a send may stay in flight before a retry may take its nonce over."""
        return self.ack_timeout + 4 * self.backend_timeout + 10.0


def check_database_url(url: str) -> None:
    """For `relay migrate`, which needs the PostgreSQL URL without its Redis partner."""
    _check_url("database_url", url, ("postgresql", "postgres"))


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    """The scheme, and a host and port that parse; the URL itself stays out of the message."""
    wanted = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number 0..65535)
    except ValueError:
        raise ConfigError(f"{name} is not a valid {wanted} URL", setting=name) from None
    if parts.scheme not in schemes:
        raise ConfigError(f"{name} must be a {wanted} URL", setting=name)
    if parts.scheme != "unix" and not parts.hostname and not parts.path.strip("/"):
        raise ConfigError(f"{name} names no host", setting=name)


SETTING_HELP: dict[str, str] = {
    "host": "address to listen on",
    "port": "port to listen on (0 picks a free one)",
    "data_dir": "directory of the embedded store",
    "database_url": "PostgreSQL URL (production mode, with --redis-url)",
    "database_read_url": "PostgreSQL URL of a streaming read replica of --database-url for the "
    "reads that tolerate lag (the stored-messages gauge, `relay audit`); the primary serves "
    "them while it does not answer",
    "redis_url": "Redis URL (production mode, with --database-url)",
    "redis_prefix": "prefix of every Redis key this relay writes",
    "redis_cluster": "--redis-url names a seed node of a Redis Cluster (hash-tagged keys, "
    "sharded pub/sub for the node bus)",
    "migrate": "at start, apply pending PostgreSQL schema migrations (under an advisory lock, "
    "so several nodes may start at once) instead of exiting 2 on an older schema",
    "handshake_timeout": "seconds a new connection has, from its TCP accept (with TLS: from the "
    "end of the TLS handshake, which has as long), to upgrade and authenticate",
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
    "slow_reader_timeout": "seconds a delivery may wait for its ack (or the outbound buffer stay "
    "full) before the connection is closed with 1013",
    "ping_interval": "seconds between the WebSocket pings the relay sends every connection",
    "ping_timeout": "seconds a ping may take to go out and be answered before the connection is "
    "closed with 1011",
    "max_connections_per_address": "concurrent connections per client address",
    "max_handshakes": "connections still in their handshake (accepted, not yet authenticated); "
    "more are reset at accept",
    "max_handshakes_per_address": "connections still in their handshake per peer address "
    "(trusted proxies exempt); more are reset at accept",
    "max_registrations_per_address": "registrations (new users and linked devices) an hour per "
    "client address, equal burst; 0: no limit",
    "rate_prekeys_per_target": "one-time pre-keys handed out an hour per target device "
    "(equal burst); further bundles come without one",
    "max_stored_messages": "stored messages per recipient device; a send that would store more "
    "is refused with too_large",
    "max_multi_users": "recipient users of one send.multi frame; more is too_large",
    "max_multi_devices": "device entries of one send.multi frame, all users together; more is "
    "too_large",
    "purge_interval": "seconds between purges of expired messages and old key events",
    "audit_retention": "seconds a key event (registrations, links, removals, key uploads and "
    "claims) is kept in the audit trail",
    "at_rest_encryption": "seal stored messages and blind user ids in the store with keys "
    "wrapped by the master key (docs/security.md, Data at rest)",
    "master_key_file": "file holding the 32-byte master key (raw, 64 hex digits or base64); "
    "SIGHUP rereads it",
    "data_key_rotation": "seconds a data key seals new stored messages before a new one "
    "replaces it",
    "shutdown_timeout": "seconds a graceful shutdown may take",
    "node_id": "name of this node among several sharing Redis (with --workers N > 1: each "
    "worker is NODE_ID-w1..NODE_ID-wN)",
    "workers": f"worker processes serving the port (SO_REUSEPORT), each a node of the cluster, "
    f"restarted when one dies; 1..{MAX_WORKERS} or {WORKERS_AUTO} (one a core); more than 1 "
    "needs the production store",
    "presence_ttl": "seconds a device's presence entry lives unless its node refreshes it",
    "max_backup_bytes": "largest key backup blob (backup.put), and never above max_body_bytes; "
    "larger ones are too_large",
    "rate_backup_reads": "key backup reads (backup.get and backup.recover) a day per user "
    "(equal burst)",
    "log_level": "log level: " + ", ".join(LOG_LEVELS),
    "log_format": "log format: text (for people) or json (one JSON object a line)",
    "tls_cert": "PEM certificate chain: serve wss:// and https:// (with --tls-key; SIGHUP reloads)",
    "tls_key": "PEM private key of --tls-cert",
    "trusted_proxies": "comma-separated CIDRs of proxies whose X-Forwarded-For names the client",
    "admin_listen": "HOST:PORT of a separate plain HTTP listener (HTTPS with --tls-cert) for /, "
    "/metrics, /v1/stats, /v1/history and /dashboard; the public port then answers 404 for them",
    "admin_token": "require `Authorization: Bearer TOKEN` for /metrics, /v1/stats and /v1/history",
}

# The default shown for a setting that is unset (None) by default, where "unset" says too little.
UNSET_MEANING: dict[str, str] = {
    "node_id": "a random id at each start",
    "database_url": "unset (the embedded store)",
    "database_read_url": "unset (every read on the primary)",
    "redis_url": "unset (the embedded store)",
    "registration_token": "unset (open registration)",
    "master_key_file": "unset (embedded: DATA_DIR/master.key, made on first start; production: "
    "required unless at_rest_encryption is false)",
    "tls_cert": "unset (plain ws:// and http://)",
    "tls_key": "unset (plain ws:// and http://)",
    "trusted_proxies": "unset (X-Forwarded-For is ignored)",
    "admin_listen": "unset (operations endpoints on the public port)",
    "admin_token": "unset (operations endpoints answer without a token)",
}


# --- showing settings without their secrets ----------------------------------------------


_PASSWORD_PARAMS = frozenset({"password", "sslpassword"})


def mask_url(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`; a password given
    as a query parameter (`?password=...`) is masked too."""
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return MASK
    if password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:{MASK}@{hostinfo}")
    if any(key.lower() in _PASSWORD_PARAMS for key, _ in query):
        masked = [(k, MASK if k.lower() in _PASSWORD_PARAMS else v) for k, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    shown = urlunsplit(parts)
    if not parts.netloc and url.startswith(f"{parts.scheme}://"):  # unix:///path keeps its //
        shown = f"{parts.scheme}://{shown[len(parts.scheme) + 1 :]}"
    return shown


def shown_value(name: str, value: object) -> object:
    """A setting's value as it may be printed: passwords and tokens masked, paths as text."""
    if value is None:
        return None
    if name in SECRET_SETTINGS:
        return MASK
    if name in URL_SETTINGS and isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    return value
