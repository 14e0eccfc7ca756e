"""Start and stop the bare forwarder (`loadtest.forwarder`) as a child process."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from types import TracebackType

READY = re.compile(r"^forwarder: serving on (ws://\S+)$")
START_TIMEOUT = 30.0


class ForwarderProcess:
    """`with ForwarderProcess() as fw:` gives `fw.url` and `fw.pid`; stopped on exit."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ForwarderProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.forwarder", "--host", self.host, "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                self._stop()
                raise RuntimeError("the forwarder did not start") from None
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(f"the forwarder exited with {code} before listening")
            match = READY.match(line)
            if match:
                self.url = match.group(1)
                return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
