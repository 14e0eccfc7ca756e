"""The operator's commands besides `serve`: show the settings, read a node's stats, list a
user's devices or key events, purge expired messages and old key events. Each returns the
process exit code and prints for people by default, or JSON for scripts."""

from __future__ import annotations

import datetime
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import orjson

from relay.config import Settings, shown_value
from relay.config_sources import LoadedSettings
from storage.at_rest.blinded import BlindedStore
from storage.at_rest.opening import AtRestError
from storage.errors import StorageError
from storage.interfaces import Store
from storage.records import DeviceRecord, KeyEvent

DEFAULT_STATS_URL = "http://127.0.0.1:8765"
STATS_PATH = "/v1/stats"
ADMIN_TOKEN_ENV = "RELAY_ADMIN_TOKEN"  # read by `relay stats` as by `relay serve`
MAX_STATS_BYTES = 4 * 1024 * 1024
EXAMPLE_USER = "5d0c2c43-8f1e-4a55-9c63-0b1c8e0f1a2b"


class AdminError(Exception):
    """A command that cannot do its job; the message says why, the code is the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- relay config show ------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(str(value)).decode("utf-8")  # a valid TOML basic string


def render_settings(loaded: LoadedSettings, fmt: str) -> str:
    """Every effective setting and where it came from; secrets masked."""
    rows = [
        (f.name, shown_value(f.name, getattr(loaded.settings, f.name)), loaded.sources[f.name])
        for f in fields(Settings)
    ]
    if fmt == "json":
        document = {
            "config_file": None if loaded.config_file is None else str(loaded.config_file),
            "settings": {name: {"value": value, "source": str(src)} for name, value, src in rows},
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode("utf-8")
    lines = ["# effective settings; after each `#`, where the value came from"]
    for name, value, source in rows:
        if value is None:
            lines.append(f"# {name} is not set  # {source}")
        else:
            lines.append(f"{name} = {_toml_value(value)}  # {source}")
    return "\n".join(lines)


# --- relay stats -------------------------------------------------------------------------


def stats_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(STATS_PATH) else base + STATS_PATH


def fetch_stats(base: str, timeout_s: float, token: str | None = None) -> dict[str, Any]:
    """GET /v1/stats of a running node, presenting the admin `token` when given; AdminError
    when it cannot be read."""
    url = stats_url(base)
    if not url.startswith(("http://", "https://")):
        raise AdminError(f"--url must be an http:// or https:// URL, not {base!r}", code=2)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(MAX_STATS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            given = "was refused" if token is not None else "is needed"
            raise AdminError(
                f"{url} answered HTTP 401: the admin token {given}; set {ADMIN_TOKEN_ENV}"
            ) from None
        raise AdminError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"cannot reach a relay at {url}: {reason}") from None
    if len(body) > MAX_STATS_BYTES:
        raise AdminError(f"{url} answered more than {MAX_STATS_BYTES} bytes")
    try:
        stats = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AdminError(f"{url} did not answer JSON: is it a relay?") from None
    if not isinstance(stats, dict):
        raise AdminError(f"{url} did not answer a JSON object: is it a relay?")
    return stats


def _flatten(value: object, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    elif value is None:
        yield prefix, "-"
    elif isinstance(value, list):
        yield prefix, orjson.dumps(value).decode("utf-8")
    else:
        yield prefix, str(value)


def render_stats(stats: Mapping[str, Any]) -> str:
    """A two-column table, nested objects as dotted names; then the nodes, one row each."""
    nodes = stats.get("nodes")
    node_table = _node_table(nodes) if isinstance(nodes, list) else None
    shown = {k: v for k, v in stats.items() if node_table is None or k != "nodes"}
    rows = list(_flatten(shown))
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if node_table is not None:
        lines += ["", f"nodes ({len(node_table) - 1})"]
        if stats.get("nodes_available") is False:
            lines.append("(the node registry did not answer: this node only)")
        lines += node_table
    return "\n".join(lines)


def _node_table(nodes: list[Any]) -> list[str] | None:
    """The node list as aligned columns; None when it is not a list of objects."""
    if not all(isinstance(node, Mapping) for node in nodes):
        return None
    header = ("node", "connections", "heartbeat age (s)", "")
    return _aligned(
        header,
        [
            (
                _cell(node.get("id")),
                _cell(node.get("connections")),
                _cell(node.get("heartbeat_age_s")),
                "this node" if node.get("this_node") is True else "",
            )
            for node in nodes
        ],
    )


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A header and rows as left-aligned columns two spaces apart."""
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]


# --- relay devices USER ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: int
    key_scheme: str
    registration_id: int
    created: str
    last_seen: str


def _utc(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_ms(ms: int) -> str:
    """To the millisecond: several key events often share a second."""
    moment = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.UTC)
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{ms % 1000:03d}Z"


def device_rows(records: Sequence[DeviceRecord]) -> list[DeviceRow]:
    return [
        DeviceRow(
            device=r.device,
            key_scheme=r.key_scheme,
            registration_id=r.registration_id,
            created=_utc(r.created_ms),
            last_seen=_utc(r.last_seen_ms),
        )
        for r in records
    ]


def render_devices(user: str, rows: Sequence[DeviceRow], fmt: str) -> str:
    if fmt == "json":
        document = {"user": user, "devices": [_row_dict(r) for r in rows]}
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode("utf-8")
    header = ("device", "key scheme", "registration id", "created (UTC)", "last seen (UTC)")
    table = [
        (str(r.device), r.key_scheme, str(r.registration_id), r.created, r.last_seen) for r in rows
    ]
    lines = [f"user {user}: {len(rows)} active device{'s' if len(rows) != 1 else ''}"]
    return "\n".join([*lines, *_aligned(header, table)])


def _row_dict(row: DeviceRow) -> dict[str, object]:
    return {f.name: getattr(row, f.name) for f in fields(DeviceRow)}


async def open_existing_store(settings: Settings) -> tuple[Store, str]:
    """The configured store; an embedded one must exist already (no empty store is made)."""
    from relay.app import open_store
    from storage.embedded import DATABASE_FILE

    if not settings.production and not (settings.data_dir / DATABASE_FILE).is_file():
        raise AdminError(f"no embedded store in {settings.data_dir} (see --data-dir)")
    try:
        store, kind = await open_store(settings)
    except StorageError as exc:
        raise AdminError(f"cannot open the store: {exc}") from None
    except AtRestError as exc:
        raise AdminError(str(exc), code=2) from None
    return store, kind


MAX_USER_TEXT = 64
_UUID_HEX = re.compile(r"[0-9a-f]{8}(-?)[0-9a-f]{4}\1[0-9a-f]{4}\1[0-9a-f]{4}\1[0-9a-f]{12}")


def canonical_user(text: str) -> str:
    """A user id as an operator may paste it (any case, with or without the dashes, braces or
    a `urn:uuid:` prefix) in the canonical lower-case form the store keeps; exit 2 otherwise."""
    core = text.strip().lower().removeprefix("urn:uuid:")
    if core.startswith("{") and core.endswith("}"):
        core = core[1:-1]
    if len(text) <= MAX_USER_TEXT and _UUID_HEX.fullmatch(core):
        return str(uuid.UUID(core))
    shown = repr(text) if len(text) <= MAX_USER_TEXT else f"{len(text)} characters"
    raise AdminError(f"USER must be a UUID such as {EXAMPLE_USER}, not {shown}", code=2)


async def list_devices(settings: Settings, user: str) -> list[DeviceRow]:
    """`user` in canonical form (see `canonical_user`)."""
    store, _ = await open_existing_store(settings)
    try:
        records = await store.devices.list_devices(user)
    except StorageError as exc:
        raise AdminError(f"the store did not answer: {exc}") from None
    finally:
        await store.close()
    if records is None:
        raise AdminError(f"no user {user} in the store")
    return device_rows(records)


# --- relay audit USER --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: str  # UTC, to the millisecond
    at_ms: int
    device: int
    kind: str
    detail: dict[str, object]


def since_ms(text: str) -> int:
    """`--since`: milliseconds since the epoch, or an ISO 8601 date or time (UTC when it
    names no offset); exit 2 otherwise."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(
            f"--since must be an ISO 8601 time such as 2026-01-31T12:00:00Z or milliseconds "
            f"since the epoch, not {text[:64]!r}",
            code=2,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def audit_rows(events: Sequence[KeyEvent]) -> list[AuditRow]:
    return [
        AuditRow(at=_utc_ms(e.at_ms), at_ms=e.at_ms, device=e.device, kind=e.kind, detail=e.detail)
        for e in events
    ]


def render_audit(user: str, rows: Sequence[AuditRow], fmt: str) -> str:
    if fmt == "json":
        document = {"user": user, "events": [_audit_dict(r) for r in rows]}
        # Sorted keys: PostgreSQL's jsonb orders a detail's keys its own way.
        options = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        return orjson.dumps(document, option=options).decode("utf-8")
    lines = [f"user {user}: {len(rows)} key event{'s' if len(rows) != 1 else ''}"]
    for r in rows:
        detail = " ".join(f"{k}={_detail_value(v)}" for k, v in sorted(r.detail.items()))
        lines.append(f"{r.at}  device {r.device}  {r.kind}  {detail}".rstrip())
    return "\n".join(lines)


def _detail_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value).replace(" ", "_")  # one token: "none left" -> none_left
    return orjson.dumps(value).decode("utf-8")


def _audit_dict(row: AuditRow) -> dict[str, object]:
    return {f.name: getattr(row, f.name) for f in fields(AuditRow)}


async def key_events(settings: Settings, user: str, since: int | None) -> list[AuditRow]:
    """`user` in canonical form (see `canonical_user`); AdminError for a user the store
    does not know."""
    store, _ = await open_existing_store(settings)
    try:
        events = await store.audit.events(user, since_ms=since)
        known = bool(events) or await store.devices.list_devices(user) is not None
    except StorageError as exc:
        raise AdminError(f"the store did not answer: {exc}") from None
    finally:
        await store.close()
    if not known:
        raise AdminError(f"no user {user} in the store")
    return audit_rows(events)


# --- relay purge -------------------------------------------------------------------------


async def purge(settings: Settings, now_ms: int) -> str:
    store, kind = await open_existing_store(settings)
    keys: list[int] = []
    try:
        deleted = await store.messages.purge_expired(now_ms)
        events = await store.audit.purge_events(settings.audit_cutoff_ms(now_ms))
        if isinstance(store, BlindedStore):
            keys = await (await store.key_access.open()).delete_unused()
    except StorageError as exc:
        raise AdminError(f"the store did not answer: {exc}") from None
    finally:
        await store.close()
    unused = f", and {len(keys)} retired data keys no message used" if keys else ""
    return (
        f"purged {deleted} expired messages and {events} key events older than "
        f"audit_retention ({_duration(settings.audit_retention)}) from the {kind} store{unused}"
    )


def _duration(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:g} days" if days >= 1 and days == int(days) else f"{seconds:g} s"
