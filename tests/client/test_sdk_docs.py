"""The example of docs/client.md runs as written against a live relay and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from e2e.support import REPO_ROOT, RelayProcess

from .sdk import WAIT

DOC = REPO_ROOT / "docs" / "client.md"


def example() -> str:
    """The first Python block of docs/client.md."""
    found = re.search(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert found, "docs/client.md has no python example"
    return found.group(1)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def run_example(script: Path, cwd: Path, url: str) -> tuple[int | None, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT * 2):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


async def test_the_documented_example_runs(relay: RelayProcess, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example(), encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for run in (1, 2):  # a second run finds the stores and reuses the users
        code, out, err = await run_example(script, cwd, relay.url)
        assert code == 0, f"run {run}: exit {code}\n{out}\n{err}"
        assert "bob got b'Hello Bob!'" in out and "alice got b'Hi Alice" in out, out
    assert names(cwd) == ["alice-store", "bob-store"]  # it wrote to the current directory only
