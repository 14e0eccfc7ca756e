"""`relay serve --workers N`: N worker processes on one port, and the parent that keeps them.

Each worker is `python -m relay serve` with the parent's own flags (file and environment
are inherited) and these on top: `--workers 1`, the port the parent chose, its node id
(`NODE_ID-wI`; from a random base when node_id is unset), with `--admin-listen` its own
admin port (the port + I - 1), and the hidden `--worker-index I`, which makes it bind with
SO_REUSEPORT and stop by itself when the pipe on its stdin closes (the parent is gone). The
kernel spreads new connections over the workers' sockets; each worker is a node of the
cluster (its own presence, bus channel and registry entry), as relays on several hosts are.

Subprocesses rather than `multiprocessing`: a worker is exactly the relay process an
operator runs as one node, its event loop and signal handlers its own, nothing inherited
from the parent's state; its ready line on stdout says when it serves.

The parent:
* binds the port first, without SO_REUSEPORT, so a port in use fails here and `--port 0`
  becomes one free port for every worker (N sockets on port 0 would get N ports); then it
  holds a socket bound to that port with SO_REUSEPORT, never listening (so it takes no
  connection), while it runs: the port stays this relay's while a worker restarts;
* prints the ready line once every worker has printed its own; a worker that exits before
  that ends the start: the others are stopped and the parent exits with that worker's code;
* restarts a worker that dies, after RestartPolicy's delay; a worker dying for the
  `max_failures`-th time within `window_s` stops the whole relay with exit 1 (a crash loop
  is a fault to fix, not to spin on);
* on SIGTERM or SIGINT sends SIGTERM to every worker and waits up to shutdown_timeout +
  STOP_MARGIN_S for each, then SIGKILLs it; exits 0 when every worker stopped by itself;
* forwards SIGHUP (the TLS certificate and master key reloads) to every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay.config import Settings
from relay.listen_address import ListenAddress

log = logging.getLogger("relay.workers")

READY_PREFIX = "relay: serving on "
STOP_MARGIN_S = 5.0  # a worker's shutdown also closes the store and stops its last tasks
WORKER_INDEX_FLAG = "--worker-index"
# The settings the parent gives each worker its own value of.
WORKER_SETTINGS = frozenset({"workers", "port", "node_id", "admin_listen"})


class PortUnavailable(OSError):
    """The port cannot be bound on this host (in use, or not an address of this host)."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How soon a dead worker is started again, and when restarting is given up."""

    max_failures: int = 5
    window_s: float = 60.0
    first_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def delay(self, recent_failures: int) -> float | None:
        """Seconds to wait before the next start after `recent_failures` deaths within the
        window (this one included); None: give up."""
        if recent_failures >= self.max_failures:
            return None
        doubled: float = self.first_delay_s * 2.0 ** max(0, recent_failures - 1)
        return min(self.max_delay_s, doubled)


@dataclass(slots=True)
class FailureWindow:
    """The deaths of one worker within the policy's window."""

    window_s: float
    times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> int:
        """Count one death at `now` (monotonic seconds); the deaths within the window."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        return len(self.times)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What every worker is started with, and what the parent needs to keep them."""

    count: int
    flags: tuple[str, ...]  # the operator's serve flags but WORKER_SETTINGS, as `--name=value`
    node_base: str  # worker I is node_base-wI
    admin: ListenAddress | None
    shutdown_timeout: float
    policy: RestartPolicy = RestartPolicy()

    def node_id(self, index: int) -> str:
        return f"{self.node_base}-w{index}"

    def argv(self, index: int, port: int) -> list[str]:
        """The command line of worker `index` (1-based); later flags win over the operator's."""
        argv = [sys.executable, "-m", "relay", "serve", *self.flags]
        argv += ["--workers=1", f"--port={port}", f"--node-id={self.node_id(index)}"]
        if self.admin is not None:
            port_i = self.admin.port + index - 1 if self.admin.port else 0
            host = f"[{self.admin.host}]" if ":" in self.admin.host else self.admin.host
            argv.append(f"--admin-listen={host}:{port_i}")
        argv.append(f"{WORKER_INDEX_FLAG}={index}")
        return argv


def plan_workers(
    settings: Settings, flags: Sequence[str], new_node_id: Callable[[], str]
) -> WorkerPlan:
    """The workers of these settings, started with the operator's `flags`."""
    return WorkerPlan(
        count=settings.worker_count,
        flags=tuple(flags),
        node_base=settings.node_id or new_node_id(),
        admin=settings.admin_address,
        shutdown_timeout=settings.shutdown_timeout,
    )


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not listening; port 0 picks a free
    one. Raises PortUnavailable when the port is taken, even by SO_REUSEPORT sockets."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:  # no SO_REUSEPORT: fails if in use
            probe.bind(address)
            port = probe.getsockname()[1]
        reservation = socket.socket(family, kind, proto)
        try:
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reservation.bind((address[0], port, *address[2:]))
        except OSError:
            reservation.close()
            raise
    except OSError as exc:
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return reservation


class _Worker:
    """One worker slot: its current process, and whether that process has said it serves."""

    def __init__(self, index: int, window_s: float) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.ready_line = ""
        self.failures = FailureWindow(window_s)


class Supervisor:
    def __init__(self, plan: WorkerPlan) -> None:
        self._plan = plan
        self._workers = [_Worker(i, plan.policy.window_s) for i in range(1, plan.count + 1)]
        self._stop = asyncio.Event()
        self._port = 0
        self._readers: set[asyncio.Task[None]] = set()
        self._failure: int | None = None

    def __str__(self) -> str:
        return ", ".join(
            f"{self._plan.node_id(w.index)} pid {w.proc.pid}"
            for w in self._workers
            if w.proc is not None
        )

    async def run(self, reservation: socket.socket) -> int:
        """Serve until SIGTERM or SIGINT (or a worker that cannot be kept); the exit code."""
        self._port = reservation.getsockname()[1]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hangup)
        keepers = [asyncio.create_task(self._keep(w)) for w in self._workers]
        all_ready = asyncio.ensure_future(self._all_ready())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([all_ready, stopping, *keepers], return_when=asyncio.FIRST_COMPLETED)
        if all_ready.done() and not self._stop.is_set():
            print(self._workers[0].ready_line, flush=True)
            log.info("%d workers serving on port %d: %s", len(self._workers), self._port, self)
            # Until SIGTERM or SIGINT, or a worker slot that gave up (it sets the stop).
            await stopping
        self._stop.set()  # a worker that failed to start stops the others
        while not all(k.done() for k in keepers):
            await asyncio.wait(keepers)
        all_ready.cancel()
        stopping.cancel()
        codes = [k.result() for k in keepers]
        if self._failure is not None:  # the cause, not the exits of the workers it stopped
            return self._failure
        return next((c for c in codes if c != 0), 0)

    async def _all_ready(self) -> None:
        for worker in self._workers:
            await worker.ready.wait()

    def _forward_hangup(self) -> None:
        """Every serving worker reloads what a relay reloads on SIGHUP (TLS certificate, master
        key); one still starting reads them as it starts."""
        live = [
            w.proc
            for w in self._workers
            if w.proc is not None and w.proc.returncode is None and w.ready.is_set()
        ]
        for proc in live:
            proc.send_signal(signal.SIGHUP)
        log.info("SIGHUP forwarded to %d workers", len(live))

    async def _keep(self, worker: _Worker) -> int:
        """Run one worker slot until the stop: start, restart after deaths; the slot's exit
        code (0: its worker stopped by itself when asked)."""
        started_once = False
        while True:
            proc = await self._start(worker)
            if not await self._wait_ready(worker, proc):
                if self._stop.is_set():
                    return await self._stop_process(worker, proc)
                if not started_once:
                    log.error("worker %d %s before serving", worker.index, _how(proc))
                    return self._fail(_exit_code(proc.returncode))
            elif started_once:
                log.warning(
                    "worker %d restarted (pid %d, node %s)",
                    worker.index,
                    proc.pid,
                    self._plan.node_id(worker.index),
                )
            started_once = True
            if proc.returncode is None and await self._until_exit_or_stop(proc):
                return await self._stop_process(worker, proc)
            deaths = worker.failures.record(time.monotonic())
            delay = self._plan.policy.delay(deaths)
            if delay is None:
                log.error(
                    "worker %d %s: %d deaths within %.0fs, giving up and stopping the relay",
                    worker.index,
                    _how(proc),
                    deaths,
                    self._plan.policy.window_s,
                )
                return self._fail(1)
            log.warning(
                "worker %d (pid %d) %s; restarting in %.2fs",
                *(worker.index, proc.pid, _how(proc), delay),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            if self._stop.is_set():
                return 0

    def _fail(self, code: int) -> int:
        """The relay cannot go on: stop every worker, and exit with the first failure's code."""
        if self._failure is None:
            self._failure = code
        self._stop.set()
        return code

    async def _start(self, worker: _Worker) -> asyncio.subprocess.Process:
        worker.ready.clear()
        proc = await asyncio.create_subprocess_exec(
            *self._plan.argv(worker.index, self._port),
            stdin=asyncio.subprocess.PIPE,  # never written: its end closing tells the parent left
            stdout=asyncio.subprocess.PIPE,
        )
        worker.proc = proc
        reader = asyncio.create_task(self._read_stdout(worker, proc))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        return proc

    async def _read_stdout(self, worker: _Worker, proc: asyncio.subprocess.Process) -> None:
        """The ready line marks the worker serving; its other lines are passed on."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(READY_PREFIX) and not worker.ready.is_set():
                worker.ready_line = line
                worker.ready.set()
            else:
                with contextlib.suppress(OSError):  # our own stdout closed: nothing to tell
                    print(line, flush=True)

    async def _wait_ready(self, worker: _Worker, proc: asyncio.subprocess.Process) -> bool:
        """True once the worker serves; False when it exited first or the stop came."""
        ready = asyncio.ensure_future(worker.ready.wait())
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([ready, exited, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (ready, exited, stop):
                waiting.cancel()
        return worker.ready.is_set() and not self._stop.is_set() and proc.returncode is None

    async def _until_exit_or_stop(self, proc: asyncio.subprocess.Process) -> bool:
        """Wait for the worker's exit or the stop; True: the stop came first."""
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([exited, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            stop.cancel()
        return proc.returncode is None

    async def _stop_process(self, worker: _Worker, proc: asyncio.subprocess.Process) -> int:
        """SIGTERM, then SIGKILL past the bound; 0 when it exited by itself with 0, or of the
        SIGTERM itself (it was still starting, before its handlers: it had served nothing)."""
        if proc.returncode is not None:
            return _exit_code(proc.returncode)
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._plan.shutdown_timeout + STOP_MARGIN_S):
                await proc.wait()
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop in time: killed", worker.index, proc.pid)
            proc.kill()
            await proc.wait()
            return 1
        return 0 if proc.returncode == -signal.SIGTERM else _exit_code(proc.returncode)


def _exit_code(returncode: int | None) -> int:
    """A worker's exit as the parent's code: its own code, 1 for a death by signal."""
    if returncode is None or returncode < 0:
        return 1
    return returncode


def _how(proc: asyncio.subprocess.Process) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        try:
            return f"died of {signal.Signals(-code).name}"
        except ValueError:
            return f"died of signal {-code}"
    return f"exited with code {code}"


def watch_parent(stop: asyncio.Event) -> Callable[[], None]:
    """In a worker: set `stop` when the parent's pipe on stdin closes (the parent died
    without stopping this worker); the function that stops watching."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log.warning("the parent process is gone: stopping")
            loop.remove_reader(fd)
            stop.set()

    def unwatch() -> None:
        loop.remove_reader(fd)

    loop.add_reader(fd, readable)
    return unwatch
