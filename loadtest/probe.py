"""Resident memory and CPU time of the server under test, sampled once per interval.

The relay publishes them on `/metrics` (Prometheus process collector); the
baseline forwarder is our own child process, read from `/proc`.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class ServerSample:
    rss_bytes: float
    cpu_seconds: float


_SAMPLED = ("process_resident_memory_bytes", "process_cpu_seconds_total")


class MetricsProbe:
    """Reads `process_resident_memory_bytes` and `process_cpu_seconds_total` from `/metrics`,
    asking for those two alone (`name[]`): the whole exposition takes the relay's event loop
    several milliseconds, once a second, and would show in the delivery latencies measured.
    A server that ignores the parameter answers with everything, which reads the same."""

    def __init__(self, ws_url: str, context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(ws_url)
        scheme = "https" if parts.scheme == "wss" else "http"
        query = "&".join(f"name[]={name}" for name in _SAMPLED)
        self.url = f"{scheme}://{parts.netloc}/metrics?{query}"
        # Straight to the relay under test: no proxy from the environment.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def sample(self) -> ServerSample | None:
        try:
            with self._opener.open(self.url, timeout=2) as resp:
                text = resp.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError):
            return None
        values: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in _SAMPLED:
                values[name] = float(value)
        if len(values) < 2:
            return None
        return ServerSample(
            values["process_resident_memory_bytes"], values["process_cpu_seconds_total"]
        )


class PidProbe:
    """Reads a local process's RSS and CPU time from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> ServerSample | None:
        try:
            with open(f"/proc/{self.pid}/statm", encoding="ascii") as f:
                rss_pages = int(f.read().split()[1])
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            return None
        cpu = (int(fields[11]) + int(fields[12])) / self.tick
        return ServerSample(rss_pages * self.page, cpu)


Probe = MetricsProbe | PidProbe
