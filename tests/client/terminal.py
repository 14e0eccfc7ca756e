"""Driving `relay-chat` as a person does: in a pseudo-terminal (pexpect), or with plain pipes.

The pseudo-terminal answers prompt_toolkit's cursor-position requests as a
real terminal does, so the input line and the status toolbar are drawn as on
a screen. Every wait is an `expect` with a timeout; nothing sleeps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pexpect
from e2e.support import REPO_ROOT

from .sdk import WAIT

PASSPHRASE = "a passphrase for the terminal tests"
_CPR_REQUEST = "\x1b[6n"
_CPR_ANSWER = "\x1b[1;1R"
PROMPT = "you>"


def chat_env(passphrase: str = PASSPHRASE) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["TERM"] = "xterm"
    env["RELAY_CHAT_PASSPHRASE"] = passphrase
    return env


def chat_argv(url: str, store: Path, *args: str) -> list[str]:
    return ["-m", "protocol.chat", "--url", url, "--store", str(store), *args]


def run_chat(
    url: str, store: Path, *args: str, passphrase: str = PASSPHRASE, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """One command with plain pipes (no terminal), bounded in time."""
    return subprocess.run(
        [sys.executable, *chat_argv(url, store, *args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=chat_env(passphrase),
        timeout=WAIT,
        check=False,
    )


def register(url: str, store: Path) -> str:
    done = run_chat(url, store, "register")
    assert done.returncode == 0, done.stderr
    found = re.search(r"registered: user ([0-9a-f-]{36}), device 1", done.stdout)
    assert found, done.stdout
    return found.group(1)


def add_contact(url: str, store: Path, name: str, user: str) -> None:
    done = run_chat(url, store, "contacts", "add", name, user)
    assert done.returncode == 0, done.stderr
    assert f"{name} = {user}" in done.stdout


class ChatTerminal:
    """`relay-chat ... chat PEER` in a pseudo-terminal of 24 x 120."""

    started: ClassVar[list[ChatTerminal]] = []

    def __init__(self, url: str, store: Path, peer: str) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            chat_argv(url, store, "chat", peer),
            env=chat_env(),
            encoding="utf-8",
            timeout=WAIT,
            dimensions=(24, 120),
        )
        # What the terminal was sent, next to the store: the first thing to read when a test fails.
        self.transcript = store.parent / f"{store.name}-chat-{len(ChatTerminal.started)}.log"
        self.child.logfile_read = self.transcript.open("w", encoding="utf-8")
        ChatTerminal.started.append(self)

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait for `pattern` in what the terminal was sent; answers cursor-position requests."""
        while True:
            index = self.child.expect([pattern, re.escape(_CPR_REQUEST)])
            if index == 0:
                match = self.child.match
                assert isinstance(match, re.Match)
                return match
            self.child.send(_CPR_ANSWER)

    def type(self, text: str) -> None:
        self.child.send(text)

    def line(self, text: str) -> None:
        self.child.send(text + "\r")

    def leave(self) -> int:
        """/quit, then the exit status (after the chat's own bounded wait for answers).

        Not Ctrl-D here: while prompt_toolkit prints a line it puts the terminal in cooked
        mode for a moment, and a Ctrl-D typed then is the line discipline's end of file,
        which nobody reads. A line typed then is only held until the input line is back.
        """
        self.line("/quit")
        return self.wait_exit()

    def ctrl_d(self) -> None:
        """Ctrl-D once the input line is drawn again after the last line printed."""
        self.expect(re.escape(PROMPT))
        self.child.sendcontrol("d")

    def wait_exit(self) -> int:
        while self.child.expect([pexpect.EOF, re.escape(_CPR_REQUEST)], timeout=WAIT * 2):
            self.child.send(_CPR_ANSWER)
        self.child.close()
        self.child.logfile_read.close()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
        return status

    @classmethod
    def kill_all(cls) -> None:
        """A failed test leaves no chat process behind."""
        for term in cls.started:
            if term.child.isalive():
                term.child.terminate(force=True)
            term.child.logfile_read.close()
        cls.started.clear()
