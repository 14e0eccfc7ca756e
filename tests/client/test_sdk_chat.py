"""relay-chat from two terminals: two processes chat through a live relay."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from e2e.support import REPO_ROOT, RelayProcess

from protocol.chat import main

from .sdk import WAIT

PASSPHRASE_ENV = {"RELAY_CHAT_PASSPHRASE": "two terminals"}


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """The chat is a front end of the SDK: one store kind is enough here."""
    r = RelayProcess(tmp_path / "relay", {}).start()
    yield r
    for term in Terminal.started:  # a failed test leaves no chat process behind
        if term.proc.returncode is None:
            term.proc.kill()
    Terminal.started.clear()
    r.stop()


def chat_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return {**env, **PASSPHRASE_ENV}


class Terminal:
    """One `python -m protocol.chat` process, read line by line."""

    started: ClassVar[list[Terminal]] = []

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        Terminal.started.append(self)

    @classmethod
    async def start(cls, relay: RelayProcess, cwd: Path, *args: str) -> Terminal:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "protocol.chat",
            "--url",
            relay.url,
            "--store",
            "store",
            *args,
            cwd=cwd,
            env=chat_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, pattern: str) -> re.Match[str]:
        """Read until a line matches (bounded): the match."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        self.lines.remove(line)
                        return found
                raw = await self.proc.stdout.readline()
                if not raw:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"no line matching {pattern!r}: {self.lines} {err!r}")
                self.lines.append(raw.decode().rstrip("\n"))

    async def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def end(self) -> int:
        """Close stdin (EOF ends the chat) and wait for the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        async with asyncio.timeout(WAIT):
            return await self.proc.wait()


async def run(relay: RelayProcess, cwd: Path, *args: str) -> str:
    term = await Terminal.start(relay, cwd, *args)
    assert term.proc.stdout is not None
    async with asyncio.timeout(WAIT):
        out, err = await term.proc.communicate(b"")
    assert term.proc.returncode == 0, err.decode()
    return out.decode()


async def test_two_people_chat_from_two_terminals(relay: RelayProcess, tmp_path: Path) -> None:
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    alice_dir.mkdir()
    bob_dir.mkdir()
    user_re = r"registered: user ([0-9a-f-]{36}), device 1"
    alice = re.search(user_re, await run(relay, alice_dir, "register"))
    bob = re.search(user_re, await run(relay, bob_dir, "register"))
    assert alice and bob
    alice_id, bob_id = alice.group(1), bob.group(1)

    bob_term = await Terminal.start(relay, bob_dir, "chat", alice_id)
    await bob_term.expect(f"chatting with {alice_id}")
    alice_term = await Terminal.start(relay, alice_dir, "chat", bob_id)
    await alice_term.expect(f"chatting with {bob_id}")
    await alice_term.type("hello bob, it's alice\n")
    await bob_term.expect(rf"^\[\d\d:\d\d:\d\d\] {alice_id}: hello bob, it's alice$")
    await bob_term.type("hi alice\n")
    await alice_term.expect(rf"\] {bob_id}: hi alice$")
    assert await alice_term.end() == 0
    await bob_term.type("see you later\n")  # alice is gone: the relay keeps it
    assert await bob_term.end() == 0

    # Alice comes back with nothing to say: the stored message is shown before she leaves.
    out = await run(relay, alice_dir, "chat", bob_id)
    assert re.search(rf"\] {bob_id}: see you later$", out, re.M), out
    assert f"user {alice_id}, device 1" in await run(relay, alice_dir, "whoami")


async def test_a_second_device_joins_with_a_link_ticket(
    relay: RelayProcess, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    out = await run(relay, first, "register")
    user = re.search(r"user ([0-9a-f-]{36})", out)
    assert user
    key = (await run(relay, second, "identity")).strip()
    ticket = (await run(relay, first, "link-ticket", key)).strip()
    out = await run(relay, second, "link", ticket)
    assert f"linked: user {user.group(1)}, device 2" in out


def test_relay_chat_is_the_console_script_and_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["relay-chat"] == "protocol.chat:main"
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("register", "chat", "link-ticket", "link", "--passphrase-env", "--url"):
        assert command in out
