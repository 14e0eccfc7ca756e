"""How many connections one generator process and one source address may carry.

A process may open at most its hard file limit of sockets, and one source address
reaches a listening port from at most the ~28,000 ephemeral ports of the system
(and the relay caps connections per client address, 10,000 by default). So a
run with many devices spreads them over enough processes, and, against a
loopback relay, over several source addresses (127.0.0.1, 127.0.0.2, ...: the
whole 127/8 block reaches the loopback interface) without being asked to.
"""

from __future__ import annotations

import ipaddress
import resource
from urllib.parse import urlsplit

# Sockets a process keeps for itself (the queues to the parent, the probe, logs).
RESERVED_FILES = 256
# Connections per loopback source address: half the relay's per-address default, and well
# inside one address's ephemeral ports.
PER_SOURCE = 5_000
LOOPBACK_SOURCES = 250


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def connections_per_process() -> int:
    """Connections one generator process can hold: its hard file limit, less a reserve."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1, hard - RESERVED_FILES)


def source_address(url: str, devices: int, global_index: int) -> str | None:
    """The loopback address device `global_index` connects from, or None (the system's choice):
    only a run of more than `PER_SOURCE` devices against a loopback IPv4 relay is spread."""
    if devices <= PER_SOURCE or not _loopback_v4(urlsplit(url).hostname):
        return None
    slot = global_index // PER_SOURCE
    if slot >= LOOPBACK_SOURCES:
        raise ValueError(f"more than {PER_SOURCE * LOOPBACK_SOURCES} devices on loopback")
    return f"127.0.0.{1 + slot}"


def _loopback_v4(host: str | None) -> bool:
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback
