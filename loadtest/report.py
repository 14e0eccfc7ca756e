"""`report.json`: environment, workload, each run's results, and the relay/baseline ratios."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.figures import RunResult

REPORT_VERSION = 1
TOOL = "relay-loadtest"


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One report: how it was made, on what, and every run's figures."""

    created: str
    command: tuple[str, ...]
    environment: dict[str, Any]
    workload: dict[str, Any]
    runs: dict[str, RunResult]
    ratios_to_baseline: dict[str, float | None] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "report_version": REPORT_VERSION,
            "tool": TOOL,
            "created": self.created,
            "command": list(self.command),
            "environment": self.environment,
            "workload": self.workload,
            "runs": {name: run.as_json() for name, run in self.runs.items()},
        }
        if self.ratios_to_baseline is not None:
            out["ratios_to_baseline"] = self.ratios_to_baseline
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        ratios = data.get("ratios_to_baseline")
        return cls(
            created=str(data.get("created", "")),
            command=tuple(data.get("command", ())),
            environment=dict(data.get("environment", {})),
            workload=dict(data["workload"]),
            runs={name: RunResult.from_json(run) for name, run in data["runs"].items()},
            ratios_to_baseline=None if ratios is None else dict(ratios),
        )


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(relay: RunResult, baseline: RunResult) -> dict[str, float | None]:
    """The relay's figures divided by the baseline's (throughput: higher is better).

    Latency ratios only when both ran at the same target rate (not after two
    maximum-throughput searches that ended at different rates).
    """
    out: dict[str, float | None] = {
        "delivered_per_s": _div(
            relay.throughput.delivered_per_s, baseline.throughput.delivered_per_s
        ),
    }
    if relay.throughput.target_rate == baseline.throughput.target_rate:
        rl, bl = relay.latency_ms, baseline.latency_ms
        out |= {
            "delivery_p50": _div(rl.delivery.p50, bl.delivery.p50),
            "delivery_p99": _div(rl.delivery.p99, bl.delivery.p99),
            "ok_p50": _div(rl.ok.p50, bl.ok.p50),
            "ok_p99": _div(rl.ok.p99, bl.ok.p99),
        }
    if relay.max_throughput is not None and baseline.max_throughput is not None:
        out["max_throughput"] = _div(
            relay.max_throughput.max_rate, baseline.max_throughput.max_rate
        )
    return out


def build(
    environment: dict[str, Any],
    workload: dict[str, Any],
    runs: dict[str, RunResult],
    command: list[str],
) -> Report:
    both = "relay" in runs and "baseline" in runs
    return Report(
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=tuple(command),
        environment=environment,
        workload=workload,
        runs=runs,
        ratios_to_baseline=ratios(runs["relay"], runs["baseline"]) if both else None,
    )


def write(report: Report, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report.as_json(), indent=2) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> Report:
    """A report.json, this version's or an earlier one's; ValueError when it is not one."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        raise ValueError(f"{path} is not a relay-loadtest report")
    try:
        return Report.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: a malformed relay-loadtest report ({exc!r})") from None
