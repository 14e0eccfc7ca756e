"""The chat's two faces: an input line that incoming messages never overwrite, or plain lines.

On a terminal, prompt_toolkit keeps the line being typed at the bottom with a
toolbar under it, and `patch_stdout` prints everything else above it. When
stdin or stdout is not a terminal (a pipe, a file, a test), lines are read
from stdin and printed as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

__all__ = ["PlainScreen", "PromptScreen", "Screen", "open_screen"]

TOOLBAR_REFRESH_S = 0.5  # the toolbar's countdown to the next connection attempt moves


class Screen(Protocol):
    def show(self, text: str) -> None:
        """Print a line above whatever is being typed."""

    def refresh(self) -> None:
        """The status changed: redraw the toolbar."""

    async def read_line(self) -> str | None:
        """The next line typed, without its newline; None when the input ends."""


class PlainScreen:
    """Lines of stdin from a daemon thread: works for ttys, pipes and files alike."""

    def __init__(self) -> None:
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
            loop.call_soon_threadsafe(self._lines.put_nowait, None)

        threading.Thread(target=pump, name="stdin", daemon=True).start()

    def show(self, text: str) -> None:
        print(text, flush=True)

    def refresh(self) -> None:
        pass

    async def read_line(self) -> str | None:
        line = await self._lines.get()
        return None if line is None else line.rstrip("\r\n")


class PromptScreen:
    """An editable input line (history, cursor keys) with a status toolbar under it."""

    def __init__(self, prompt: str, toolbar: Callable[[], str]) -> None:
        self._session: PromptSession[str] = PromptSession(
            prompt,
            bottom_toolbar=lambda: " " + toolbar(),
            erase_when_done=True,  # the sent line is shown again, with its state
            refresh_interval=TOOLBAR_REFRESH_S,
        )

    def show(self, text: str) -> None:
        print(text, flush=True)  # sys.stdout is patched: printed above the input line

    def refresh(self) -> None:
        app = self._session.app
        if app.is_running:
            app.invalidate()

    async def read_line(self) -> str | None:
        try:
            return await self._session.prompt_async()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: leave like /quit
            return None


@contextlib.contextmanager
def open_screen(prompt: str, toolbar: Callable[[], str]) -> Iterator[Screen]:
    """A prompt_toolkit screen on a terminal, plain lines otherwise."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        yield PlainScreen()
        return
    with patch_stdout():
        yield PromptScreen(prompt, toolbar)
