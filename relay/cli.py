"""The `relay` command line: serve, migrate, purge, config show, stats, devices, audit, keys,
docs.

`serve` and `config show` take every setting; the commands that only open the store take
`--config` and the store settings (`relay.config.STORE_SETTINGS`), so their `--help` lists
only what they use.

Exit codes: 0 done, 1 the command could not do its job (a node or store out of
reach, an unknown user), 2 a bad setting or argument (`relay: bad setting: ...`) or a
state to fix before start (a PostgreSQL schema older or newer than the relay's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol.version import version_line
from relay.admin import (
    ADMIN_TOKEN_ENV,
    DEFAULT_STATS_URL,
    AdminError,
    canonical_user,
    fetch_stats,
    key_events,
    list_devices,
    purge,
    render_audit,
    render_devices,
    render_settings,
    render_stats,
    since_ms,
)
from relay.config import (
    AT_REST_SETTINGS,
    MIGRATE_SETTINGS,
    PURGE_SETTINGS,
    STORE_SETTINGS,
    ConfigError,
    Settings,
)
from relay.config_sources import (
    LoadedSettings,
    add_settings_arguments,
    given_flags,
    load_database_url,
    load_settings,
)
from relay.workers import WORKER_INDEX_FLAG, WORKER_SETTINGS

STATS_TIMEOUT_S = 5.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="End-to-end-encrypted messaging relay.",
        epilog="Settings come from flags, RELAY_* environment variables and a TOML file "
        "(--config), in that order of precedence. The documentation is installed with the "
        "package: `relay docs` lists its pages, `relay docs operations` prints the "
        "operator's guide.",
    )
    parser.add_argument("--version", action="version", version=version_line("relay"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the relay server",
        description="Run the relay until SIGTERM or SIGINT, then shut down gracefully.",
    )
    add_settings_arguments(serve)
    # Given by the parent of `--workers N` to each worker (relay.workers), not by operators.
    serve.add_argument(WORKER_INDEX_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    migrate = commands.add_parser(
        "migrate",
        help="apply (or roll back) the PostgreSQL schema migrations",
        description="Apply the PostgreSQL schema migrations (production mode only). Reads "
        "database_url like the other commands: flag, env RELAY_DATABASE_URL or --config file.",
    )
    add_settings_arguments(migrate, MIGRATE_SETTINGS)
    action = migrate.add_mutually_exclusive_group()
    action.add_argument(
        "--to", type=int, metavar="N", help="migrate up or down to schema version N"
    )
    action.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when the live schema matches the migrations, 1 otherwise",
    )
    purge_cmd = commands.add_parser(
        "purge",
        help="delete expired stored messages and old key events now",
        description="Delete the expired stored messages of the configured store now, and the "
        "key events older than audit_retention (a running relay also does so every "
        "purge_interval seconds).",
    )
    add_settings_arguments(purge_cmd, PURGE_SETTINGS)
    config = commands.add_parser(
        "config",
        help="show the effective settings",
        description="Inspect the settings that `relay serve` would use.",
    )
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show",
        help="print every effective setting and where it came from",
        description="Print every effective setting and its source (default, file, env, flag); "
        "passwords in URLs and the registration token are masked.",
    )
    show.add_argument(
        "--format", choices=["toml", "json"], default="toml", help="output format (default toml)"
    )
    add_settings_arguments(show)
    stats = commands.add_parser(
        "stats",
        help="print a running node's /v1/stats",
        description="Read GET /v1/stats from a running relay and print it. When the relay "
        f"has an admin token, set {ADMIN_TOKEN_ENV} to it: it is sent as "
        "`Authorization: Bearer`.",
    )
    stats.add_argument(
        "--url",
        default=DEFAULT_STATS_URL,
        help="the node's HTTP address: its --admin-listen address when set, its public "
        f"port otherwise (default {DEFAULT_STATS_URL})",
    )
    stats.add_argument("--json", action="store_true", help="print the JSON as received")
    stats.add_argument(
        "--timeout",
        type=float,
        default=STATS_TIMEOUT_S,
        help=f"seconds to wait for the node (default {STATS_TIMEOUT_S:g})",
    )
    devices = commands.add_parser(
        "devices",
        help="list a user's devices from the store",
        description="List a user's active devices from the configured store.",
    )
    devices.add_argument(
        "user", metavar="USER", help="the user id, a UUID (any case, dashes optional)"
    )
    devices.add_argument("--json", action="store_true", help="print JSON")
    add_settings_arguments(devices, STORE_SETTINGS)
    audit = commands.add_parser(
        "audit",
        help="print a user's key events from the store",
        description="Print the key-event audit trail of a user from the configured store, "
        "oldest first: registrations, device links and removals, identity-key retirements, "
        "signed pre-key rotations, pre-key uploads and claims (key ids, never keys).",
    )
    audit.add_argument(
        "user", metavar="USER", help="the user id, a UUID (any case, dashes optional)"
    )
    audit.add_argument(
        "--since",
        metavar="TIME",
        help="only events at or after TIME: ISO 8601 (UTC unless it names an offset, "
        "e.g. 2026-01-31T12:00:00Z) or milliseconds since the epoch",
    )
    audit.add_argument("--json", action="store_true", help="print JSON")
    add_settings_arguments(audit, STORE_SETTINGS)
    keys = commands.add_parser(
        "keys",
        help="show or rotate the keys of encryption at rest",
        description="The data keys that seal stored messages and the master key that wraps "
        "them (docs/security.md, Data at rest).",
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_status_cmd = keys_commands.add_parser(
        "status",
        help="every key, its state, age and stored messages, and the master key's fingerprint",
    )
    keys_status_cmd.add_argument("--json", action="store_true", help="print JSON")
    add_settings_arguments(keys_status_cmd, STORE_SETTINGS)
    rotate_data_cmd = keys_commands.add_parser(
        "rotate-data",
        help="make a new active data key now",
        description="A new data key seals new stored messages from now on; the old one keeps "
        "opening its rows and is deleted once no stored message uses it.",
    )
    add_settings_arguments(rotate_data_cmd, STORE_SETTINGS)
    rotate_master_cmd = keys_commands.add_parser(
        "rotate-master",
        help="re-wrap every key under a new master key",
        description="Re-wrap every data key and the index key under the key in --new-key-file, "
        "in one transaction; stored messages are not rewritten. Then give every node the new "
        "key file and send it SIGHUP.",
    )
    rotate_master_cmd.add_argument(
        "--new-key-file",
        type=Path,
        required=True,
        metavar="PATH",
        help="the new master key (32 bytes: raw, 64 hex digits or base64)",
    )
    add_settings_arguments(rotate_master_cmd, STORE_SETTINGS)
    docs = commands.add_parser(
        "docs",
        help="list or print the documentation installed with the package",
        description="Without TOPIC, list the documentation pages (the README and docs/*.md, "
        "installed with the package) and where they are; with TOPIC, print that page.",
    )
    docs.add_argument("topic", metavar="TOPIC", nargs="?", help="a page, e.g. operations")
    return parser


def _install_uvloop() -> None:
    """uvloop when installed; the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "migrate":
        return _migrate(args)
    if args.command == "stats":
        return _stats(args)
    if args.command == "docs":
        return _docs(args.topic)
    try:
        if args.command in ("devices", "audit"):
            args.user = canonical_user(args.user)
        since = since_ms(args.since) if args.command == "audit" and args.since else None
        names = {
            "purge": PURGE_SETTINGS,
            "devices": STORE_SETTINGS,
            "audit": STORE_SETTINGS,
            "keys": STORE_SETTINGS,
        }.get(args.command)
        loaded = load_settings(args, os.environ, names)
    except AdminError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"relay: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "config":
            print(render_settings(loaded, args.format))
            return 0
        if args.command == "purge":
            from relay.clock import SystemClock

            print(asyncio.run(purge(loaded.settings, SystemClock().now_ms())))
            return 0
        if args.command == "devices":
            rows = asyncio.run(list_devices(loaded.settings, args.user))
            print(render_devices(args.user, rows, "json" if args.json else "text"))
            return 0
        if args.command == "audit":
            events = asyncio.run(key_events(loaded.settings, args.user, since))
            print(render_audit(args.user, events, "json" if args.json else "text"))
            return 0
        if args.command == "keys":
            return _keys(args, loaded.settings)
    except AdminError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.code
    return _serve(loaded, args)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from relay.keys_admin import keys_status, render_status, rotate_data, rotate_master

    if args.keys_command == "status":
        report = asyncio.run(keys_status(settings))
        print(render_status(report, "json" if args.json else "text"))
    elif args.keys_command == "rotate-data":
        print(asyncio.run(rotate_data(settings)))
    else:
        print(asyncio.run(rotate_master(settings, args.new_key_file)))
    return 0


def _serve(loaded: LoadedSettings, args: argparse.Namespace) -> int:
    from relay.admin_listener import AdminListenError
    from relay.app import run
    from relay.logs import setup_logging
    from relay.schemaguard import SchemaRefused
    from relay.tls import CertificateError, ServerTls
    from storage.at_rest.opening import AtRestError

    settings = loaded.settings
    setup_logging(settings.log_level, settings.log_format, worker=args.worker_index)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            tls = ServerTls.load(settings.tls_cert, settings.tls_key)
        except CertificateError as exc:
            where = ", ".join(
                f"{name} from {loaded.sources[name]}"
                for name in (exc.setting or "tls_cert", *exc.related)
            )
            print(f"relay: bad setting: {exc} ({where})", file=sys.stderr)
            return 2
    as_worker = args.worker_index is not None
    if settings.worker_count > 1 and not as_worker:
        return _supervise(loaded, args)
    _install_uvloop()
    try:
        return asyncio.run(run(settings, tls=tls, as_worker=as_worker))
    except KeyboardInterrupt:
        return 0
    except SchemaRefused as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.code
    except AtRestError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except AdminListenError as exc:
        print(f"relay: bad setting: {exc} (from {loaded.sources['admin_listen']})", file=sys.stderr)
        return 2


def _supervise(loaded: LoadedSettings, args: argparse.Namespace) -> int:
    """`--workers N`: the parent of N worker processes (relay.workers)."""
    from relay.cluster import new_node_id
    from relay.workers import PortUnavailable, Supervisor, plan_workers, reserve_port

    settings = loaded.settings
    plan = plan_workers(settings, given_flags(args, WORKER_SETTINGS), new_node_id)
    try:
        reservation = reserve_port(settings.host, settings.port)
    except PortUnavailable as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    with reservation:
        try:
            return asyncio.run(Supervisor(plan).run(reservation))
        except KeyboardInterrupt:  # before its handlers: no worker was started yet
            return 0


def _stats(args: argparse.Namespace) -> int:
    try:
        stats = fetch_stats(args.url, args.timeout, os.environ.get(ADMIN_TOKEN_ENV) or None)
    except AdminError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        import orjson

        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode("utf-8"))
    else:
        print(render_stats(stats))
    return 0


def _docs(topic: str | None) -> int:
    from relay.documentation import find_page, pages, render_index

    found = pages()
    if topic is None:
        print(render_index(found))
        return 0
    page = find_page(found, topic)
    if page is None:
        topics = ", ".join(p.topic for p in found)
        print(f"relay: no documentation page {topic[:64]!r}; pages: {topics}", file=sys.stderr)
        return 2
    print(page.file.read_text(encoding="utf-8"), end="")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    try:
        database_url = load_database_url(args, os.environ)
        at_rest = load_settings(args, os.environ, AT_REST_SETTINGS).settings
    except ConfigError as exc:
        print(f"relay: bad setting: {exc}", file=sys.stderr)
        return 2
    if database_url is None:
        print(
            "relay: migrate needs database_url: --database-url, RELAY_DATABASE_URL "
            "or database_url in the --config file",
            file=sys.stderr,
        )
        return 2
    from relay.at_rest_upgrade import encrypt_clear_data, pending_encryption
    from storage.at_rest.opening import AtRestError
    from storage.errors import StorageError
    from storage.postgres.migrate import check, latest_version, migrate

    encrypting = at_rest.at_rest_encryption and args.to in (None, latest_version())
    try:
        if args.check:
            ok, message = asyncio.run(check(database_url))
            print(message)
            if ok and encrypting:
                pending = asyncio.run(pending_encryption(database_url))
                if pending is not None:
                    print(f"encryption at rest pending: {pending}; run `relay migrate`")
                    return 1
            return 0 if ok else 1
        try:
            steps = asyncio.run(migrate(database_url, to=args.to))
        except ValueError as exc:  # `--to` names no schema version
            print(f"relay: migrate --to: {exc}", file=sys.stderr)
            return 2
        for line in steps or ["schema up to date"]:
            print(line)
        if encrypting:
            done = asyncio.run(encrypt_clear_data(database_url, at_rest))
            if done is not None:
                print(done)
    except AtRestError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"relay: migrate failed: {exc}", file=sys.stderr)
        return 1
    return 0
