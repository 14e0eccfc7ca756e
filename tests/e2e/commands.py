"""Run the real `relay` command line (`python -m relay ...`) as a subprocess, the way an operator
does, with no RELAY_* variable leaking in from the environment of the test run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .support import REPO_ROOT

COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run_relay(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd or REPO_ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


async def arun_relay(
    args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Result:
    return await asyncio.to_thread(run_relay, args, env, cwd)
