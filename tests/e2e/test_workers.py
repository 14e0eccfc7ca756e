"""`relay serve --workers 2` (production store only): devices on different workers of one port
exchange messages; a worker killed with SIGKILL is restarted by the parent and nothing
answered `ok` is lost; SIGTERM stops every worker gracefully, SIGHUP reaches every worker;
each worker answers on its own admin port; the embedded store and bad counts are refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio
from websockets.asyncio.client import connect

from protocol.client import tls_context

from .certs import Authority, serial_of
from .stores import REDIS_URL, StoreProvisioner
from .support import REPO_ROOT, Device, RelayProcess, new_user, stop_relays, wait_until
from .test_cluster import Ledger, Receiver, burst_through_a_kill

COMMAND_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def production() -> Iterator[StoreProvisioner]:
    provisioner = StoreProvisioner("production")
    yield provisioner
    provisioner.cleanup()


@pytest.fixture
def start_workers(production: StoreProvisioner, tmp_path: Path) -> Iterator[Any]:
    """Start `relay serve --workers 2` (more options as keywords) on a fresh store."""
    started: list[RelayProcess] = []

    def start(**options: Any) -> RelayProcess:
        relay = RelayProcess(
            tmp_path / f"relay-{len(started)}",
            {"workers": 2, **options},
            env=production.new_store_env(),
        )
        started.append(relay)
        return relay.start()

    yield start
    problems = stop_relays(started)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def worker_pids(parent: int) -> dict[str, int]:
    """node id -> pid of the parent's worker processes (from /proc)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if int(stat.rpartition(")")[2].split()[1]) != parent:
            continue
        for arg in argv:
            if arg.startswith(b"--node-id="):
                found[arg.partition(b"=")[2].decode()] = int(entry.name)
    return found


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def holders(relay: RelayProcess, devices: list[Device]) -> dict[str, list[Device]]:
    """node id -> the devices whose presence entry that worker holds."""
    prefix = relay.extra_env["RELAY_REDIS_PREFIX"]
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:

        async def entries() -> list[Any] | None:
            keys = [f"{prefix}presence:{d.user}:{d.device}" for d in devices]
            values = await client.mget(keys)
            return None if any(v is None for v in values) else values

        values = await wait_until(entries, 10, "a presence entry for every device")
    finally:
        await client.aclose()
    by_node: dict[str, list[Device]] = {}
    for device, value in zip(devices, values, strict=True):
        by_node.setdefault(value.decode().partition("|")[0], []).append(device)
    return by_node


async def devices_on_both(
    relay: RelayProcess, at_least: int, *, limit: int = 64
) -> dict[str, list[Device]]:
    """Connect new users until each of the two workers holds `at_least` of them (the kernel
    picks the worker of each connection)."""
    devices: list[Device] = []
    while len(devices) < limit:
        batch = [await new_user(relay.url) for _ in range(2 * at_least)]
        for device in batch:
            await device.next_push("queue_empty")
        devices += batch
        by_node = await holders(relay, devices)
        if len(by_node) == 2 and all(len(held) >= at_least for held in by_node.values()):
            return by_node
    raise AssertionError(f"{limit} connections did not reach both workers: {by_node.keys()}")


async def close_all(devices: list[Device]) -> None:
    for device in devices:
        await device.close()


def run_relay(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


# --------------------------------------------------------------------------- serving


async def test_devices_on_different_workers_exchange_messages(start_workers):
    relay = start_workers(node_id="t")
    assert set(worker_pids(relay.pid)) == {"t-w1", "t-w2"}
    by_node = await devices_on_both(relay, 2)
    assert set(by_node) == {"t-w1", "t-w2"}
    (a1, a2), (b1, b2) = by_node["t-w1"][:2], by_node["t-w2"][:2]

    for sender, recipient in ((a1, b1), (b2, a2)):  # w1 -> w2, then w2 -> w1: over the bus
        body = f"{sender.user} to {recipient.user}".encode()
        pending = asyncio.ensure_future(sender.send_message(recipient, body=body))
        got = await recipient.next_push("deliver")
        await recipient.ack(got["id"])
        assert got["body"] == body and got["from"] == sender.user
        answer = await pending
        assert answer["t"] == "ok" and answer["delivered"] == [1], answer

    # Stored for a device gone from w2, fetched on connecting again (wherever it lands).
    await b1.close()
    answer = await a1.send_message(b1, body=b"later")
    assert answer["t"] == "ok" and answer["stored"] == [1], answer
    auth = await b1.reconnect()
    assert auth["queued"] == 1
    assert [d["body"] for d in await b1.drain()] == [b"later"]

    # Any worker answers the operations paths of the shared port and lists both nodes.
    status, _, body = await relay.ahttp_get("/v1/stats")
    assert status == 200
    stats = orjson.loads(body)
    assert {n["id"] for n in stats["nodes"]} == {"t-w1", "t-w2"}
    await close_all([d for held in by_node.values() for d in held])


async def test_each_worker_has_its_admin_port(start_workers):
    relay = start_workers(admin_listen="127.0.0.1:0")
    urls = [
        line.rpartition(" ")[2] for line in relay.startup_lines if "operations endpoints" in line
    ]
    assert len(urls) == 2 and len(set(urls)) == 2, relay.startup_lines
    status, _, _ = await relay.ahttp_get("/v1/stats")
    assert status == 404  # the operations paths left the public port

    def node_of(url: str) -> str:
        with urllib.request.urlopen(url + "v1/stats", timeout=10) as resp:
            return str(orjson.loads(resp.read())["node_id"])

    nodes = {await asyncio.to_thread(node_of, url) for url in urls}
    assert nodes == set(worker_pids(relay.pid))


# --------------------------------------------------------------------------- SIGKILL, SIGTERM


class MovingReceiver(Receiver):
    """A receiver whose connection moves to the same port again: the kernel hands it to a
    live worker (a connect that races the dead worker's socket is tried again, bounded)."""

    async def _move(self) -> None:
        self.reconnects += 1
        for attempt in range(20):
            try:
                await self.device.reconnect()
                return
            except Exception:
                if attempt == 19:
                    raise


async def test_sigkill_of_a_worker_is_restarted_and_loses_nothing(start_workers):
    relay = start_workers(
        node_id="k", presence_ttl=3, rate_requests=5000, rate_requests_burst=10000
    )
    victim_pid = worker_pids(relay.pid)["k-w2"]
    by_node = await devices_on_both(relay, 4)
    senders = by_node["k-w1"][:2]  # on the worker that lives
    ledger = Ledger()
    receivers = [
        MovingReceiver(d, ledger, [relay.url])
        for held in by_node.values()
        for d in held
        if d not in senders
    ]
    on_victim = len(by_node["k-w2"])
    stop = asyncio.Event()
    receiving = [asyncio.create_task(r.run(stop)) for r in receivers]
    total, kill_after, in_flight = 3000, 800, 40
    killed = await burst_through_a_kill(
        senders,
        list(receivers),
        ledger,
        total=total,
        kill_after=kill_after,
        in_flight=in_flight,
        kill=lambda: os.kill(victim_pid, signal.SIGKILL),
    )
    assert killed and len(ledger.ok) == total

    async def restarted() -> bool:
        pid = worker_pids(relay.pid).get("k-w2")
        return pid is not None and pid != victim_pid and "worker 2 restarted" in relay.stderr_tail()

    await wait_until(restarted, 30, "the parent to restart worker 2")
    assert not alive(victim_pid) and relay.running()

    ledger.expect_all()
    try:
        await asyncio.wait_for(ledger.complete.wait(), 60)
    except TimeoutError:
        raise AssertionError(f"{len(ledger.outstanding)} ok'd messages never delivered") from None
    finally:
        stop.set()
        await asyncio.gather(*receiving, return_exceptions=True)
    moved = sum(r.reconnects for r in receivers)
    print(
        f"\n{len(ledger.ok)} ok; {moved} receivers moved ({on_victim} were on the killed "
        f"worker); {ledger.after_unconfirmed_ack} redelivered after an unconfirmed ack"
    )
    assert moved >= on_victim
    assert ledger.violations == [], ledger.violations[:5]
    await close_all([*senders, *(r.device for r in receivers)])


async def test_sigterm_stops_every_worker_gracefully(start_workers):
    relay = start_workers(node_id="s")
    pids = worker_pids(relay.pid)
    by_node = await devices_on_both(relay, 1)

    # SIGHUP: passed on to every worker, which reloads its master key and goes on serving.
    os.kill(relay.pid, signal.SIGHUP)

    async def reloaded() -> bool:
        tail = relay.stderr_tail()
        return "SIGHUP forwarded to 2 workers" in tail and tail.count("master key reloaded") == 2

    await wait_until(reloaded, 10, "both workers to reload the master key")
    assert worker_pids(relay.pid) == pids
    assert (await relay.ahttp_get("/healthz"))[0] == 200

    devices = [d for held in by_node.values() for d in held]
    assert await relay.astop() == 0
    assert [await d.closed_code() for d in devices] == [1001] * len(devices)
    assert [pid for pid in pids.values() if alive(pid)] == []
    stopped = [line for line in relay.stderr_tail().splitlines() if "INFO relay: stopped" in line]
    assert len(stopped) == 2 and {line.rpartition(" ")[2] for line in stopped} == {
        "worker=1",
        "worker=2",
    }, stopped


async def test_a_crash_loop_stops_the_relay(production, tmp_path):
    """The 5th death of one worker within 60 s: the parent gives up, stops the other worker
    and exits 1."""
    relay = RelayProcess(
        tmp_path / "relay", {"workers": 2, "node_id": "c"}, env=production.new_store_env()
    )
    relay.start()
    try:
        killed: set[int] = set()
        for death in range(1, 6):

            async def next_worker() -> int | None:
                pid = worker_pids(relay.pid).get("c-w1")
                return pid if pid is not None and pid not in killed else None

            pid = await wait_until(next_worker, 30, f"worker 1 to be started again ({death})")
            survivor = worker_pids(relay.pid)["c-w2"]
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        code = await asyncio.to_thread(relay.proc.wait, 30)  # type: ignore[union-attr]
        assert code == 1, relay.stderr_tail()
        assert "5 deaths within 60s, giving up" in relay.stderr_tail()
        assert not alive(survivor)
    finally:
        if relay.running():
            relay.kill()


async def test_a_worker_that_cannot_start_ends_the_start(production):
    """A database whose schema was rolled back: each worker exits 2 before serving, and so does
    the parent."""
    env = production.new_store_env()
    down = await asyncio.to_thread(run_relay, ["migrate", "--to", "0"], env)
    assert down.returncode == 0, down.stderr
    done = await asyncio.to_thread(run_relay, ["serve", "--workers", "2", "--port", "0"], env)
    assert done.returncode == 2, done.stderr
    assert "relay: the database schema is at version 0, this relay needs version" in done.stderr
    assert "exited with code 2 before serving" in done.stderr


async def test_sighup_reloads_the_certificate_of_every_worker(start_workers, tmp_path):
    ca = Authority(tmp_path / "tls", "workers")
    first = ca.issue(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    relay = start_workers(tls_cert=first.cert, tls_key=first.key)
    assert relay.scheme == "wss"
    context = tls_context(ca.ca_file)

    async def serials(count: int) -> set[int]:
        """The certificates shown to `count` new connections (spread over the workers)."""
        seen = set()
        for _ in range(count):
            async with connect(relay.url, ssl=context, open_timeout=10) as ws:
                ssl_object = ws.transport.get_extra_info("ssl_object")
                seen.add(serial_of(ssl_object.getpeercert(binary_form=True)))
        return seen

    assert await serials(8) == {first.serial}
    second = ca.issue(first.cert, first.key)
    os.kill(relay.pid, signal.SIGHUP)

    async def reloaded() -> bool:
        return relay.stderr_tail().count("TLS certificate reloaded") == 2

    await wait_until(reloaded, 10, "both workers to reload the certificate")
    assert await serials(16) == {second.serial}


# --------------------------------------------------------------------------- refusals


def test_the_embedded_store_refuses_several_workers(tmp_path):
    done = run_relay(["serve", "--workers", "2", "--port", "0", "--data-dir", str(tmp_path)])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "relay: bad setting: workers 2 needs the production store (database_url and "
        "redis_url): the embedded store is single-process (workers from flag --workers, "
        "database_url from default)"
    ]


@pytest.mark.parametrize("given", ["0", "-1", "junk", "2.5", "65"])
def test_bad_worker_counts_are_refused(tmp_path, given):
    shown = repr(given) if not given.lstrip("-").isdigit() else given
    for args, env, source in (
        (["--workers", given], {}, "flag --workers"),
        ([], {"RELAY_WORKERS": given}, "env RELAY_WORKERS"),
    ):
        done = run_relay(["serve", "--data-dir", str(tmp_path), *args], env)
        assert done.returncode == 2, done
        assert done.stderr.splitlines() == [
            f"relay: bad setting: workers must be a whole number 1..64 or 'auto' (one a core), "
            f"not {shown} (from {source})"
        ]
    config = tmp_path / "relay.toml"
    config.write_text("workers = 2.5\n")
    done = run_relay(["serve", "--config", str(config)])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f'relay: bad setting: workers must be an integer or "auto", not a float '
        f"(from file {config}:workers)"
    ]


def test_auto_is_a_worker_count(production, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('workers = "auto"\n')
    urls = production.new_store_env()
    shown = run_relay(["config", "show", "--config", str(config)], urls)
    assert shown.returncode == 0, shown.stderr
    assert f'workers = "auto"  # file {config}:workers' in shown.stdout.splitlines()
    cores = len(os.sched_getaffinity(0))
    embedded = run_relay(["config", "show", "--config", str(config)])
    if cores == 1:  # one worker: the embedded store serves it
        assert embedded.returncode == 0, embedded.stderr
    else:
        assert embedded.returncode == 2
        assert embedded.stderr.startswith(f"relay: bad setting: workers auto ({cores}) needs ")


def test_a_port_in_use_is_refused_by_the_parent(production, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_relay(
            ["serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
            production.new_store_env(),
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"relay: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
