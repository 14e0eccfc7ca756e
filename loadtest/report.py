"""`report.json`: environment, workload, each run's results, and the relay/baseline ratios."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def ratios(relay: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """The relay's figures divided by the baseline's (throughput: higher is better).

    Latency ratios only when both ran at the same target rate (not after two
    maximum-throughput searches that ended at different rates).
    """

    def div(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return a / b

    rl, bl = relay["latency_ms"]["delivery"], baseline["latency_ms"]["delivery"]
    out: dict[str, float | None] = {
        "delivered_per_s": div(
            relay["throughput"]["delivered_per_s"], baseline["throughput"]["delivered_per_s"]
        ),
    }
    if relay["throughput"]["target_rate"] != baseline["throughput"]["target_rate"]:
        if "max_throughput" in relay and "max_throughput" in baseline:
            out["max_throughput"] = div(
                relay["max_throughput"]["max_rate"], baseline["max_throughput"]["max_rate"]
            )
        return out
    out |= {
        "delivery_p50": div(rl.get("p50"), bl.get("p50")),
        "delivery_p99": div(rl.get("p99"), bl.get("p99")),
        "ok_p50": div(
            relay["latency_ms"]["ok"].get("p50"), baseline["latency_ms"]["ok"].get("p50")
        ),
        "ok_p99": div(
            relay["latency_ms"]["ok"].get("p99"), baseline["latency_ms"]["ok"].get("p99")
        ),
    }
    if "max_throughput" in relay and "max_throughput" in baseline:
        out["max_throughput"] = div(
            relay["max_throughput"]["max_rate"], baseline["max_throughput"]["max_rate"]
        )
    return out


def build(
    environment: dict[str, Any],
    workload: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    command: list[str],
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "tool": "relay-loadtest",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "environment": environment,
        "workload": workload,
        "runs": runs,
    }
    if "relay" in runs and "baseline" in runs:
        report["ratios_to_baseline"] = ratios(runs["relay"], runs["baseline"])
    return report


def write(report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("tool") != "relay-loadtest":
        raise ValueError(f"{path} is not a relay-loadtest report")
    return data
