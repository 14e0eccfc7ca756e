"""Run the Autobahn server cases against the relay's WebSocket server and print the results.

    python -m tests.conformance.run --kosoku .venv-conformance/bin/kosoku [--write-doc FILE]

Two runs, each against a fresh echo server (`tests.conformance.echo`): every case with the
relay's default settings, then section 9 (messages up to 16 MiB) with `--max-frame-bytes`
raised to the suite's largest message, so that the 1009s of the first run are shown to be
the frame limit at work and nothing else. kosoku comes from a virtual environment of its
own (`make conformance` builds it from requirements/conformance.txt); its Autobahn reports
are kept under `--reports`. Prints a table per section; `--write-doc` puts the same table
in a Markdown file between the result markers. Exits 1 when a case failed that is not
explained in `verdicts.py`, 2 when the run itself could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from websockets.version import version as websockets_version

from tests.conformance.echo import READY_PREFIX
from tests.conformance.verdicts import SECTIONS, CaseResult, Outcome, classify, explanation

ROOT = Path(__file__).resolve().parent.parent.parent
LARGEST_MESSAGE = 16 * 1024 * 1024  # section 9's largest message (9.1.6, 9.2.6)
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 15.0
BEGIN_MARK = "<!-- conformance-results:begin -->"
END_MARK = "<!-- conformance-results:end -->"


class RunError(Exception):
    """The run could not be made (the echo did not start, kosoku wrote no report)."""


@dataclass(frozen=True, slots=True)
class Pass:
    name: str
    echo_flags: tuple[str, ...]
    cases: tuple[str, ...]  # kosoku include globs; empty means every case


# Section 9's groups, the cases of each in order: what the durations are durations of.
PERFORMANCE_GROUPS = {
    "9.1": "one text message of 64 KiB, 256 KiB, 1, 4, 8, 16 MiB",
    "9.2": "one binary message, the same sizes",
    "9.3": "4 MiB text in fragments of 64 B, 256 B, 1, 4, 16, 64, 256 KiB, 1, 4 MiB",
    "9.4": "4 MiB binary, the same fragments",
    "9.5": "1 MiB text written in chops of 64, 128, 256, 512, 1024, 2048 B",
    "9.6": "1 MiB binary, the same chops",
    "9.7": "1000 text messages in turn, of 0, 16, 64, 256, 1024, 4096 B",
    "9.8": "1000 binary messages in turn, the same sizes",
}


@dataclass(frozen=True, slots=True)
class PassResult:
    run: Pass
    results: tuple[CaseResult, ...]
    seconds: float


@contextlib.contextmanager
def echo_server(flags: Sequence[str], log: Path) -> Iterator[str]:
    """An echo server subprocess on a port of its own; yields its URL, stops it after."""
    command = [sys.executable, "-m", "tests.conformance.echo", "--port", "0", *flags]
    with log.open("w") as errors:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        yield _ready_url(proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _ready_url(proc: subprocess.Popen[str], log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=left):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip()
    raise RunError(f"the echo server did not start; see {log}")


def run_kosoku(kosoku: Path, url: str, cases: Sequence[str], outdir: Path) -> list[CaseResult]:
    """Every selected case against `url`; the results as kosoku's Autobahn report has them.
    kosoku exits 1 when a case failed: the report, not its exit code, is read."""
    command = [str(kosoku), url, "--outdir", str(outdir)]
    for case in cases:
        command += ["--include", case]
    log = outdir.with_suffix(".kosoku.log")
    outdir.mkdir(parents=True, exist_ok=True)
    index = outdir / "index.json"
    index.unlink(missing_ok=True)  # a report left by an earlier run must not be read
    with log.open("w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
    if not index.exists():
        raise RunError(f"kosoku wrote no report; see {log}")
    agents = json.loads(index.read_text())
    results = []
    for agent in agents.values():
        for case_id, summary in agent.items():
            details = json.loads((outdir / summary["reportfile"]).read_text())
            results.append(
                CaseResult(
                    case_id=case_id,
                    behavior=summary["behavior"],
                    behavior_close=summary["behaviorClose"],
                    remote_close_code=details.get("remoteCloseCode"),
                    remote_close_reason=details.get("remoteCloseReason") or "",
                    duration_ms=int(summary["duration"]),
                )
            )
    return sorted(results, key=lambda r: [int(part) for part in r.case_id.split(".")])


def run_pass(kosoku: Path, run: Pass, reports: Path) -> PassResult:
    outdir = reports / run.name
    started = time.monotonic()
    with echo_server(run.echo_flags, reports / f"{run.name}.echo.log") as url:
        results = run_kosoku(kosoku, url, run.cases, outdir)
    return PassResult(run, tuple(results), time.monotonic() - started)


COLUMNS = (
    Outcome.PASSED,
    Outcome.NON_STRICT,
    Outcome.INFORMATIONAL,
    Outcome.DECLINED,
    Outcome.LIMIT,
    Outcome.LIBRARY,
    Outcome.OURS,
)


def table(result: PassResult) -> list[str]:
    """A Markdown table: one row per Autobahn section, one column per outcome."""
    counts: dict[str, Counter[Outcome]] = {}
    for case in result.results:
        counts.setdefault(case.section, Counter())[classify(case)] += 1
    head = "| section | cases | " + " | ".join(c.value for c in COLUMNS) + " |"
    rule = "|---|--:|" + "--:|" * len(COLUMNS)
    lines = [head, rule]
    total: Counter[Outcome] = Counter()
    for section in sorted(counts, key=int):
        row = counts[section]
        total.update(row)
        name = f"{section} {SECTIONS.get(section, '')}".strip()
        cells = " | ".join(str(row[c]) for c in COLUMNS)
        lines.append(f"| {name} | {sum(row.values())} | {cells} |")
    cells = " | ".join(f"**{total[c]}**" for c in COLUMNS)
    lines.append(f"| **all** | **{sum(total.values())}** | {cells} |")
    return lines


def not_passed(result: PassResult) -> list[str]:
    """The cases that did not pass strictly, grouped by their explanation."""
    groups: dict[tuple[Outcome, str], list[str]] = {}
    for case in result.results:
        outcome = classify(case)
        if outcome is not Outcome.PASSED:
            key = (outcome, explanation(case, outcome))
            groups.setdefault(key, []).append(case.case_id)
    return [
        f"- {outcome.value}, {_ranges(ids)}: {why}."
        for (outcome, why), ids in sorted(groups.items(), key=lambda g: COLUMNS.index(g[0][0]))
    ]


def _ranges(ids: list[str]) -> str:
    """`12.1.1 … 13.7.18 (216 cases)` for long lists, the ids themselves for short ones."""
    if len(ids) <= 16:
        return ", ".join(ids)
    return f"{ids[0]} … {ids[-1]} ({len(ids)} cases)"


def timings(result: PassResult) -> list[str]:
    """Section 9's durations (ms, each case from its first frame to its close), by group;
    a case that did not pass shows its outcome instead (1009: refused at a limit)."""
    groups: dict[str, list[str]] = {}
    for case in result.results:
        group = ".".join(case.case_id.split(".")[:2])
        if group in PERFORMANCE_GROUPS:
            outcome = classify(case)
            shown = {Outcome.PASSED: str(case.duration_ms), Outcome.LIMIT: "1009"}.get(
                outcome, outcome.value
            )
            groups.setdefault(group, []).append(shown)
    if not groups:
        return []
    lines = ["| cases | what | ms, case by case |", "|---|---|---|"]
    for group, cells in groups.items():
        lines.append(f"| {group}.x | {PERFORMANCE_GROUPS[group]} | {', '.join(cells)} |")
    return [*lines, ""]


def report(passes: Sequence[PassResult], kosoku_version: str) -> list[str]:
    lines = [
        f"kosoku {kosoku_version} (Autobahn TestSuite cases), websockets "
        f"{websockets_version}, Python {sys.version.split()[0]}.",
        "",
    ]
    for result in passes:
        flags = " ".join(result.run.echo_flags) or "(the defaults)"
        cases = ", ".join(result.run.cases) or "every case"
        lines += [
            f"### {result.run.name}: {cases}, relay settings {flags}",
            "",
            f"{len(result.results)} cases in {result.seconds:.0f} s.",
            "",
            *table(result),
            "",
            *not_passed(result),
            "",
            *timings(result),
        ]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def write_doc(doc: Path, lines: Sequence[str]) -> None:
    text = doc.read_text()
    begin, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if begin < 0 or end < begin:
        raise RunError(f"{doc} has no {BEGIN_MARK} … {END_MARK} block")
    body = "\n".join(lines)
    doc.write_text(f"{text[: begin + len(BEGIN_MARK)]}\n{body}\n{text[end:]}")


def kosoku_version(kosoku: Path) -> str:
    python = kosoku.parent / "python"
    probe = "import importlib.metadata as m; print(m.version('kosoku'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() or "(version unknown)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.run")
    parser.add_argument("--kosoku", type=Path, default=ROOT / ".venv-conformance/bin/kosoku")
    parser.add_argument("--reports", type=Path, default=ROOT / ".conformance")
    parser.add_argument(
        "--cases", action="append", default=[], help="case id or glob (repeatable; default all)"
    )
    parser.add_argument("--write-doc", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    if not args.kosoku.exists():
        print(f"conformance: no kosoku at {args.kosoku}; `make conformance` installs it")
        return 2
    args.reports.mkdir(parents=True, exist_ok=True)
    passes = [Pass("defaults", (), tuple(args.cases))]
    if not args.cases or any(c.startswith("9") for c in args.cases):
        raised = ("--max-frame-bytes", str(LARGEST_MESSAGE))
        passes.append(Pass("frame-limit-16MiB", raised, ("9.*",)))
    try:
        results = [run_pass(args.kosoku, run, args.reports) for run in passes]
    except (RunError, subprocess.TimeoutExpired) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2
    lines = report(results, kosoku_version(args.kosoku))
    print("\n".join(lines))
    print(f"\nAutobahn reports: {args.reports}/*/index.html")
    if args.write_doc is not None:
        write_doc(args.write_doc, lines)
    ours = [c.case_id for r in results for c in r.results if classify(c) is Outcome.OURS]
    if ours:
        print(f"conformance: {len(ours)} cases failed that are ours to fix: {', '.join(ours)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
