"""The `relay` command line: serve, migrate, purge."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from relay.config import ConfigError, Settings, add_settings_arguments, settings_from


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="End-to-end-encrypted messaging relay."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the relay server")
    add_settings_arguments(serve)
    serve.add_argument(
        "--log-level",
        default=os.environ.get("RELAY_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (env RELAY_LOG_LEVEL; default INFO)",
    )
    migrate = commands.add_parser(
        "migrate", help="apply (or roll back) the PostgreSQL schema migrations"
    )
    migrate.add_argument(
        "--database-url",
        default=os.environ.get("RELAY_DATABASE_URL"),
        help="PostgreSQL URL (env RELAY_DATABASE_URL)",
    )
    action = migrate.add_mutually_exclusive_group()
    action.add_argument(
        "--to", type=int, metavar="N", help="migrate up or down to schema version N"
    )
    action.add_argument(
        "--check",
        action="store_true",
        help="exit 0 when the live schema matches the migrations, 1 otherwise",
    )
    purge = commands.add_parser("purge", help="delete expired stored messages now")
    add_settings_arguments(purge)
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
    try:
        settings = settings_from(args, os.environ)
    except ConfigError as exc:
        print(f"relay: bad setting: {exc}", file=sys.stderr)
        return 2
    if args.command == "purge":
        return asyncio.run(_purge(settings))
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.root.level))
    from relay.app import run

    _install_uvloop()
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0


def _migrate(args: argparse.Namespace) -> int:
    if not args.database_url:
        print("relay: migrate needs --database-url or RELAY_DATABASE_URL", file=sys.stderr)
        return 2
    from storage.errors import StorageError
    from storage.postgres.migrate import check, migrate

    try:
        if args.check:
            ok, message = asyncio.run(check(args.database_url))
            print(message)
            return 0 if ok else 1
        for line in asyncio.run(migrate(args.database_url, to=args.to)) or ["schema up to date"]:
            print(line)
    except StorageError as exc:
        print(f"relay: migrate failed: {exc}", file=sys.stderr)
        return 1
    return 0


async def _purge(settings: Settings) -> int:
    from relay.app import open_store
    from relay.clock import SystemClock

    store, kind = await open_store(settings)
    try:
        deleted = await store.messages.purge_expired(SystemClock().now_ms())
    finally:
        await store.close()
    print(f"purged {deleted} expired messages from the {kind} store")
    return 0
