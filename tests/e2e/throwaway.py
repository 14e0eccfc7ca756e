"""Throwaway backends for the fault tests: a private Redis server, a private PostgreSQL
cluster, and fresh databases / key prefixes on the machine's services, all cleaned up."""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from .stores import REDIS_URL, _admin, _database_url, master_key_env

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "relay", "migrate", "--database-url", url],
        check=True,
        capture_output=True,
        timeout=60,
    )


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """`redis-server` on a fixed port, without persistence: a restart starts empty."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError(f"redis-server not ready within {timeout}s: {seen[-5:]}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(f"redis-server exited with {code}: {seen[-10:]}")
            seen.append(line)
            if "Ready to accept connections" in line:
                return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


# --------------------------------------------------------------------------- PostgreSQL


def _as_postgres(*argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, *argv], check=True, capture_output=True, text=True, timeout=timeout
    )


class PgCluster:
    """A private PostgreSQL cluster (initdb, trust auth) in a temp dir, on its own port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="relay-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> PgCluster:
        _as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        )
        self.initialised = True
        return self

    def streaming_replica(self) -> PgCluster:
        """A new cluster cloned from this running one by pg_basebackup -R: a hot standby
        that streams this cluster's WAL once started (initdb's pg_hba lets replication in)."""
        replica = PgCluster()
        _as_postgres(
            str(PG_BIN / "pg_basebackup"),
            "-D",
            str(replica.data),
            "-R",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "--no-sync",
            "-X",
            "stream",
            timeout=120.0,
        )
        replica.initialised = True
        return replica

    def start(self) -> None:
        _as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1",
            "-w",
            "-t",
            "30",
            "start",
        )

    def promote(self) -> None:
        """A standby made primary (the failover step), once it accepts writes."""
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def stop(self, mode: str = "fast") -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        if not self.initialised:
            return False
        try:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status")
        except subprocess.CalledProcessError:
            return False
        return True

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no postgres log)"


# --------------------------------------------------------------------------- machine's services


class MachineStores:
    """Fresh databases on the machine's PostgreSQL and key prefixes on its Redis."""

    def __init__(self) -> None:
        self.databases: list[str] = []
        self.prefixes: list[tuple[str, str]] = []  # (redis url, prefix)

    def new_database(self, *, migrated: bool = True) -> str:
        name = f"relay_faults_{secrets.token_hex(6)}"
        _admin(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        url = _database_url(name)
        if migrated:
            migrate(url)
        return url

    def new_prefix(self, redis_url: str = REDIS_URL) -> str:
        prefix = f"relayfaults:{secrets.token_hex(6)}:"
        self.prefixes.append((redis_url, prefix))
        return prefix

    def env(self, redis_url: str = REDIS_URL, *, migrated: bool = True) -> dict[str, str]:
        return {
            "RELAY_DATABASE_URL": self.new_database(migrated=migrated),
            "RELAY_REDIS_URL": redis_url,
            "RELAY_REDIS_PREFIX": self.new_prefix(redis_url),
            **master_key_env(),
        }

    def cleanup(self) -> None:
        try:
            for name in self.databases:
                _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            for url, prefix in self.prefixes:
                with contextlib.suppress(redis.RedisError):
                    client = redis.Redis.from_url(url, socket_timeout=5)
                    try:
                        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                        if keys:
                            client.delete(*keys)
                    finally:
                        client.close()
            self.databases.clear()
            self.prefixes.clear()
