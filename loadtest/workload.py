"""The workload of one run: what the command line asked for, as one frozen value.

Every generator process receives the same `Workload` and its own share of the
devices (`Share`), so a run is reproducible from the `workload` section of its
report.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class Scenario(enum.StrEnum):
    STEADY = "steady"
    FANOUT = "fanout"
    OFFLINE_DRAIN = "offline-drain"
    CONNECT_STORM = "connect-storm"
    RECONNECT_STORM = "reconnect-storm"
    SOAK = "soak"
    FAULTS = "faults"


class Pairing(enum.StrEnum):
    PAIRS = "pairs"
    RANDOM = "random"


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """Everything that shapes the traffic; the same for the relay and the baseline."""

    scenario: Scenario
    url: str
    devices: int
    rate: float
    duration: float
    size: int
    procs: int
    pairing: Pairing = Pairing.PAIRS
    group: int = 10
    queue: int = 100
    connect_rate: float = 500.0
    hold: float = 5.0
    jitter: float = 2.0
    grace: float = 10.0
    prekeys: int = 5
    setup_concurrency: int = 32
    bucket: float = 1.0
    subprotocol: str = "relay.v1+msgpack"
    e2e: bool = False
    ca_file: str | None = None  # PEM CA bundle that verifies a wss:// relay
    # faults: further nodes of the same cluster; devices are spread over `url` and these and
    # move to the next one when theirs goes away.
    also_urls: tuple[str, ...] = ()
    offline_share: float = 0.2  # faults: the share of its time a device spends offline
    away: float = 3.0  # faults: mean seconds of one offline period

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.also_urls)

    def for_url(self, url: str) -> Workload:
        """The same workload against another server (the baseline forwarder, plain ws://)."""
        values = asdict(self)
        values["url"] = url
        values["also_urls"] = ()
        values["ca_file"] = None
        values["scenario"] = self.scenario
        values["pairing"] = self.pairing
        return Workload(**values)

    def with_rate(self, rate: float) -> Workload:
        values = asdict(self)
        values["rate"] = rate
        values["scenario"] = self.scenario
        values["pairing"] = self.pairing
        return Workload(**values)

    @property
    def stepped_rate(self) -> float:
        """The rate a maximum search steps: connections per second in a connect storm."""
        return self.connect_rate if self.scenario is Scenario.CONNECT_STORM else self.rate

    def with_stepped_rate(self, rate: float) -> Workload:
        if self.scenario is not Scenario.CONNECT_STORM:
            return self.with_rate(rate)
        values = asdict(self)
        values["connect_rate"] = rate
        values["scenario"] = self.scenario
        values["pairing"] = self.pairing
        return Workload(**values)

    def as_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["scenario"] = str(self.scenario)
        values["pairing"] = str(self.pairing)
        values["also_urls"] = list(self.also_urls)
        return values


# Which options shape each scenario's traffic: the one place that says so (the report
# lists only these). A `Workload` field that no scenario names here applies to all of them.
SCENARIO_OPTIONS: dict[Scenario, frozenset[str]] = {
    Scenario.STEADY: frozenset({"rate", "duration", "pairing", "size", "e2e"}),
    Scenario.SOAK: frozenset({"rate", "duration", "pairing", "size", "e2e"}),
    Scenario.FANOUT: frozenset({"rate", "duration", "group", "size", "e2e"}),
    Scenario.OFFLINE_DRAIN: frozenset({"queue", "size", "e2e"}),
    Scenario.CONNECT_STORM: frozenset({"connect_rate", "hold"}),
    Scenario.RECONNECT_STORM: frozenset({"rate", "duration", "pairing", "jitter", "size", "e2e"}),
    Scenario.FAULTS: frozenset(
        {"rate", "duration", "pairing", "size", "jitter", "also_urls", "offline_share", "away"}
    ),
}
SCENARIO_SPECIFIC = frozenset().union(*SCENARIO_OPTIONS.values())


def applies(scenario: Scenario, option: str) -> bool:
    """Whether `option` (a `Workload` field) has an effect on `scenario`."""
    return option not in SCENARIO_SPECIFIC or option in SCENARIO_OPTIONS[scenario]


@dataclass(frozen=True, slots=True)
class Share:
    """One generator process's part of the run: its devices and its part of the rate."""

    index: int
    procs: int
    devices: int
    rate: float

    def global_index(self, local: int) -> int:
        """Interleave the processes' devices so a ramp spreads evenly over them."""
        return local * self.procs + self.index


def split(workload: Workload, per_process: int | None = None) -> list[Share]:
    """Divide devices (keeping pairs and groups whole) and rate over the processes; more
    processes than asked when one could not hold `per_process` connections (its file limit)."""
    unit = workload.group + 1 if workload.scenario is Scenario.FANOUT else 2
    units = max(1, workload.devices // unit)
    wanted = workload.procs
    if per_process is not None:
        wanted = max(wanted, -(-workload.devices // per_process))
    procs = max(1, min(wanted, units))
    shares: list[Share] = []
    for i in range(procs):
        n_units = units // procs + (1 if i < units % procs else 0)
        shares.append(
            Share(
                index=i, procs=procs, devices=n_units * unit, rate=workload.rate * n_units / units
            )
        )
    return shares
