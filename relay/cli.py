"""The `relay` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from relay.config import ConfigError, add_settings_arguments, settings_from


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
    try:
        settings = settings_from(args, os.environ)
    except ConfigError as exc:
        print(f"relay: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from relay.app import run

    _install_uvloop()
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0
