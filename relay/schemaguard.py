"""The schema guard: a production relay serves only on the schema its code was written for.

At start, `check_at_start` reads the applied version of the PostgreSQL schema and compares it
with the newest migration file: an older schema stops the start (exit 2, one line naming both
versions and the `relay migrate` command) unless `--migrate` applies the pending migrations,
under the migrator's advisory lock, so several nodes may start at once; a newer one always
stops it. While running, `SchemaWatch` lets the readiness probe notice a schema changed under
the relay (`relay migrate --to 0`): the probe reads the version again, at most every
`RECHECK_S` seconds, so a node nobody polls reads nothing.

The embedded store is not guarded here: it migrates itself when opened.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass
from typing import Final

from relay.clock import Clock
from relay.config import Settings, mask_url
from storage.errors import Unavailable
from storage.interfaces import Store

log = logging.getLogger("relay.schema")

RECHECK_S: Final = 5.0  # the readiness probe's schema reading is reused this long
READ_TIMEOUT_S: Final = 1.0  # like the backends' ping: /readyz must answer promptly


class SchemaRefused(Exception):
    """The relay must not serve on this schema. The message is the operator's one line;
    `code` is the process exit code (2: the operator must act first, 1: PostgreSQL failed)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SchemaVersions:
    """The applied schema version (None until PostgreSQL answered) and the one expected."""

    live: int | None
    expected: int

    @property
    def problem(self) -> str | None:
        """Why the relay should not serve on this schema; None when it matches."""
        if self.live is None:
            return f"schema version unknown (PostgreSQL did not answer), expected {self.expected}"
        if self.live < self.expected:
            return f"schema version {self.live}, expected {self.expected}: run relay migrate"
        if self.live > self.expected:
            return (
                f"schema version {self.live}, expected {self.expected}: "
                "this relay is older than the schema"
            )
        return None


def _behind(url: str, live: int, expected: int) -> str:
    command = f"relay migrate --database-url {shlex.quote(mask_url(url))}"
    return (
        f"the database schema is at version {live}, this relay needs version {expected}: "
        f"run `{command}` first, or start the relay with --migrate"
    )


def _ahead(live: int, expected: int) -> str:
    return (
        f"the database schema is at version {live}, this relay knows versions up to {expected}: "
        f"the relay is older than the schema; run a release that knows version {live} "
        f"(or roll the schema back with that release's `relay migrate --to {expected}`)"
    )


async def check_at_start(settings: Settings) -> None:
    """Return when the schema matches (migrating it first with `settings.migrate`); raise
    SchemaRefused otherwise. A PostgreSQL out of reach does not stop a plain start (the relay
    starts while a backend is down, and /readyz reports the schema once it answers), but it
    stops a start with --migrate, which cannot keep its promise."""
    from storage.postgres.migrate import SchemaTooNew, latest_version, migrate, schema_version

    url = settings.database_url
    assert url is not None, "the schema guard is for production mode"
    expected = latest_version()
    try:
        live = await schema_version(url, timeout_s=settings.backend_timeout)
    except Unavailable as exc:
        if settings.migrate:
            raise SchemaRefused(f"--migrate: PostgreSQL out of reach: {exc}", code=1) from None
        log.warning("schema version not checked at start, PostgreSQL out of reach: %s", exc)
        return
    if live > expected:
        raise SchemaRefused(_ahead(live, expected), code=2)
    if live == expected:
        log.info("schema version %d is the latest", live)
        return
    if not settings.migrate:
        raise SchemaRefused(_behind(url, live, expected), code=2)
    try:
        steps = await migrate(url)
    except SchemaTooNew as exc:  # another node, of a newer release, migrated meanwhile
        raise SchemaRefused(_ahead(exc.live, expected), code=2) from None
    except Unavailable as exc:
        raise SchemaRefused(f"--migrate failed: {exc}", code=1) from None
    if steps:
        log.info("schema migrated to version %d: %s", expected, ", ".join(steps))
    else:
        log.info("schema version %d is the latest (another node migrated it)", expected)


class SchemaWatch:
    """The schema version as the readiness probe sees it: read on a pooled connection at most
    every `recheck_s` seconds, the reading shared by concurrent probes. A failed read is not
    kept (the next probe reads again). When the version changes, the pool's connections are
    replaced, since their prepared statements may name tables dropped meanwhile."""

    def __init__(self, store: Store, *, clock: Clock, recheck_s: float = RECHECK_S) -> None:
        from storage.at_rest.blinded import BlindedStore
        from storage.postgres.migrate import latest_version
        from storage.production import ProductionStore

        if isinstance(store, BlindedStore):
            store = store.inner
        assert isinstance(store, ProductionStore), "the schema guard is for production mode"
        self._db = store.database
        self._recheck_s = recheck_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._versions = SchemaVersions(live=None, expected=latest_version())
        self._read_at: float | None = None

    async def versions(self) -> SchemaVersions:
        async with self._lock:
            if self._read_at is None or self._clock.monotonic() - self._read_at >= self._recheck_s:
                await self._read()
            return self._versions

    async def _read(self) -> None:
        from storage.postgres.migrate import read_version

        try:
            async with asyncio.timeout(READ_TIMEOUT_S), self._db.connection("schema") as conn:
                live = await read_version(conn)
        except (Unavailable, TimeoutError):
            return
        self._read_at = self._clock.monotonic()
        before = self._versions
        if live == before.live:
            return
        self._versions = SchemaVersions(live=live, expected=before.expected)
        if before.live is not None:
            await self._db.expire_connections()
        problem = self._versions.problem
        if problem is not None:
            log.warning("schema drift: %s; /readyz answers 503", problem)
        elif before.live is not None:
            log.info("schema version %d is the expected one again; /readyz answers 200", live)
