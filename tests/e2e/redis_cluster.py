"""A throwaway Redis Cluster on loopback: 3 masters and 3 replicas on free ports, in a temp
dir, without persistence; every wait bounded, every process killed by its PID at the end.

The node timeout is short (`NODE_TIMEOUT_MS`) so that a killed master's replica is promoted
within seconds, as the failover tests need.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000
START_TIMEOUT_S = 30.0
BUS_PORT_OFFSET = 10_000  # each node also listens on port + 10000 (the cluster bus)
# Both a node's port and its bus port stay below the kernel's ephemeral range (32768 and up
# by default), so an outgoing connection or a `bind(0)` elsewhere cannot take one of them
# between the check here and redis-server's own bind.
CLUSTER_PORTS = range(20_000, 22_768)
SPAWN_ATTEMPTS = 5


def free_cluster_port(taken: frozenset[int] = frozenset()) -> int:
    """A port P with P and P + 10000 both free and neither in `taken`."""
    for _ in range(200):
        port = random.choice(CLUSTER_PORTS)
        bus = port + BUS_PORT_OFFSET
        if port in taken or bus in taken:
            continue
        if _bindable(port) and _bindable(bus):
            return port
    raise RuntimeError("no free port pair for a redis cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ClusterNode:
    port: int
    proc: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0)

    def alive(self) -> bool:
        return self.proc.poll() is None


class RedisClusterServers:
    """Six `redis-server --cluster-enabled yes` processes made into one cluster."""

    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.dir = Path(tempfile.mkdtemp(prefix="relay-rcluster-", dir="/tmp"))
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """A seed node (any live node will do)."""
        return f"redis://127.0.0.1:{self.live_nodes()[0].port}/0"

    def start(self) -> RedisClusterServers:
        try:
            for _ in range(self.masters * (1 + self.replicas_per_master)):
                self.nodes.append(self._spawn_answering())
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas_per_master),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT_S,
            )
            self.wait_ok()
        except BaseException:
            self.destroy()
            raise
        return self

    def _spawn_answering(self) -> ClusterNode:
        """A node that answers PING. A port checked free can still be taken before
        redis-server binds it (the server then exits): such a node is started again on
        another port, a bounded number of times."""
        for attempt in range(1, SPAWN_ATTEMPTS + 1):
            taken = frozenset(p for n in self.nodes for p in (n.port, n.port + BUS_PORT_OFFSET))
            node = self._spawn(free_cluster_port(taken))
            try:
                _wait(lambda n=node: _pings(n), f"redis node {node.port} answers")
            except NodeExited:
                if attempt == SPAWN_ATTEMPTS:
                    raise
                continue
            return node
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> ClusterNode:
        proc = subprocess.Popen(
            [
                "redis-server",
                "--cluster-enabled",
                "yes",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # A replica takes over however long ago it last heard its master: with the
                # default factor a replica of a freshly made cluster may refuse to.
                "--cluster-replica-validity-factor",
                "0",
                # The other masters keep serving while one fails over.
                "--cluster-require-full-coverage",
                "no",
                "--repl-diskless-sync-delay",  # replicas in sync at once, not after 5 s
                "0",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(self.dir / f"redis-{port}.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return ClusterNode(port, proc)

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every live node says cluster_state:ok and every replica is in sync with its
        master (a replica still syncing would take over with nothing)."""
        _wait(self._all_ok, "cluster_state:ok on every node", timeout)
        _wait(self._replicas_in_sync, "replica in sync with its master", timeout)

    def _replicas_in_sync(self) -> bool:
        for node in self.live_nodes():
            try:
                with node.client() as c:
                    info = c.info("replication")
            except redis.RedisError:
                return False
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
            replica = info.get("slave0")
            if info.get("role") == "master" and (
                not isinstance(replica, dict) or replica.get("state") != "online"
            ):
                return False
        return True

    def _all_ok(self) -> bool:
        for node in self.live_nodes():
            try:
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive()]

    def role(self, node: ClusterNode) -> str:
        with node.client() as c:
            reply = c.execute_command("ROLE")
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)

    def master_of(self, key: str) -> ClusterNode:
        """The live node serving `key`'s slot as master now."""
        with self.live_nodes()[0].client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no master serves slot {slot}")

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The replicas connected to `master` now (its ROLE)."""
        with master.client() as c:
            role = c.execute_command("ROLE")
        ports = {int(replica[1]) for replica in role[2]}
        return [n for n in self.nodes if n.port in ports]

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL, as a crash."""
        if node.alive():
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)

    def wait_promoted(self, dead: ClusterNode, timeout: float = START_TIMEOUT_S) -> None:
        """Until a replica of the killed master serves its slots and the cluster is ok."""

        def promoted() -> bool:
            try:
                with self.live_nodes()[0].client() as c:
                    slots = c.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                return False
            serving = {int(master[1]) for _, _, master, *_ in slots}
            return dead.port not in serving and self._all_ok()

        _wait(promoted, f"a replica of {dead.port} promoted", timeout)

    def destroy(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                if node.alive():
                    node.proc.send_signal(signal.SIGKILL)
                node.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class NodeExited(RuntimeError):
    """A redis-server process ended while it was expected to serve."""


def _pings(node: ClusterNode) -> bool:
    if not node.alive():
        raise NodeExited(f"redis-server on {node.port} exited with {node.proc.returncode}")
    try:
        with node.client() as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def _wait(check: object, what: str, timeout: float = START_TIMEOUT_S) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis cluster: no {what} within {timeout}s")
        time.sleep(0.05)  # polling a condition with a deadline


@contextlib.contextmanager
def redis_cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers().start()
    try:
        yield servers
    finally:
        servers.destroy()
