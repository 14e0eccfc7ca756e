"""Run every fuzz target in turn for a while: `python -m tests.fuzz.run [--seconds N] [TARGET...]`.

Each target starts from its committed corpus (`tests/fuzz/corpus/TARGET`, never written to:
new inputs go to a scratch directory) and runs under libFuzzer's limits: an input that takes
longer than `--timeout` seconds or a process above `--rss-mb` is a failure like a crash. A
crashing input is saved under `.fuzz/crashes/TARGET/`; commit it under
`tests/fuzz/regressions/TARGET/` with the fix so pytest replays it. Prints executions and
coverage per target; exits non-zero when a target failed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import TARGETS

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
_DONE = re.compile(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", re.MULTILINE)
_LAST = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)", re.MULTILINE)
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Outcome:
    target: str
    passed: bool
    executions: int
    cov: int
    ft: int
    exec_per_s: int
    log: Path


def run_target(target: str, seconds: int, timeout: int, rss_mb: int, logs: Path) -> Outcome:
    crashes = ROOT / ".fuzz" / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    log = logs / f"{target}.log"
    with tempfile.TemporaryDirectory(prefix=f"relay-fuzz-{target}-") as scratch:
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.fuzz",
            target,
            f"-max_total_time={seconds}",
            f"-timeout={timeout}",
            f"-rss_limit_mb={rss_mb}",
            f"-artifact_prefix={crashes}/",
            "-print_final_stats=1",
            scratch,
            str(HERE / "corpus" / target),
        ]
        with log.open("w") as out:
            code = subprocess.run(
                command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            ).returncode
    text = log.read_text(errors="replace")
    stats = _DONE.findall(text) or _LAST.findall(text) or [("0", "0", "0", "0")]
    executed = _EXECUTED.findall(text)
    count, cov, ft, speed = (int(x) for x in stats[-1])
    return Outcome(target, code == 0, int(executed[-1]) if executed else count, cov, ft, speed, log)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)} (default: all)"
    )
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory limit of a run")
    parser.add_argument("--logs", type=Path, default=ROOT / ".fuzz" / "logs")
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {unknown[0]!r}: choose from {', '.join(TARGETS)}")
    args.logs.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for target in args.targets or TARGETS:
        outcome = run_target(target, args.seconds, args.timeout, args.rss_mb, args.logs)
        outcomes.append(outcome)
        verdict = "ok" if outcome.passed else f"FAILED (see {outcome.log})"
        print(
            f"fuzz {target:<10} {outcome.executions:>9} execs  cov {outcome.cov:>5}  "
            f"ft {outcome.ft:>6}  {outcome.exec_per_s:>6} exec/s  {verdict}",
            flush=True,
        )
    failed = [o.target for o in outcomes if not o.passed]
    failures = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"fuzz: {len(outcomes) - len(failed)} of {len(outcomes)} targets ok{failures}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
