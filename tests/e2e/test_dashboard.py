# Helpers here take an explicit `timeout` (seconds) on purpose: every wait is bounded.
# ruff: noqa: ASYNC109
"""`/dashboard` in a real browser: headless Chromium, driven over the DevTools protocol,
loads the page from a relay that has been under a small load for a few seconds, checks that
its first poll already charts those seconds (the relay's history), waits until every chart
shows data, and saves a screenshot (`test-artifacts/dashboard.png`, or under $RELAY_TEST_ARTIFACTS).
On an `--admin-listen` port with an admin token, the page sends the token of its URL
fragment, and says so when it has none.

Chromium is Debian's `chromium` package (`.ci/run` installs it). Without it the test
fails, unless RELAY_TEST_NO_BROWSER=1 says to skip it on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from .admin_http import admin_base
from .stores import StoreProvisioner
from .support import (
    REPO_ROOT,
    Device,
    RelayProcess,
    error_of,
    new_user,
    offline_user,
    stop_relays,
    wait_until,
)

CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIEWPORT = {"width": 1440, "height": 900}
MIN_POLLS = 12  # about 12 s of polling on the charts
BEFORE_OPEN_SAMPLES = 5  # seconds of load the relay's history holds before the page opens
TIMEOUT_S = 90.0
DEVTOOLS_LINE = re.compile(r"DevTools listening on ws://[^:/]+:(\d+)/")

# The page says it has data when each of these reached a non-zero value.
SHOWS_DATA = (
    "connections",
    "messagesIn",
    "messagesOut",
    "latencyP50",
    "queue",
    "errors",
)


def artifacts_dir() -> Path:
    return Path(os.environ.get("RELAY_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")


@pytest.fixture
def chromium_path() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("RELAY_TEST_NO_BROWSER") == "1":
        pytest.skip("no /usr/bin/chromium and RELAY_TEST_NO_BROWSER=1")
    pytest.fail(
        "the dashboard test needs Debian's chromium (/usr/bin/chromium): "
        "`apt-get install -y chromium` (.ci/run does it), "
        "or set RELAY_TEST_NO_BROWSER=1 to skip it on purpose",
        pytrace=False,
    )


class Chromium:
    """A headless Chromium process with a throwaway profile; its DevTools port."""

    def __init__(self, binary: Path, profile: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: stopped with all its children
        )
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def devtools_port(self, timeout: float) -> int:
        """Wait for Chromium's "DevTools listening on ws://HOST:PORT/..." line."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"chromium did not start within {timeout}s") from None
            if line is None:
                raise AssertionError("chromium exited:\n" + "".join(self.stderr[-30:]))
            self.stderr.append(line)
            match = DEVTOOLS_LINE.search(line)
            if match:
                # The same port that Chromium writes to DevToolsActivePort in the profile;
                # the line comes when it listens, the file may still be empty then.
                return int(match.group(1))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self._ws.recv())
                if message.get("id") == call_id:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result
                if "method" in message:
                    self._events.append(message)

    async def event(self, method: str, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for i, message in enumerate(self._events):
                    if message["method"] == method:
                        return self._events.pop(i)
                message = json.loads(await self._ws.recv())
                if "method" in message:
                    self._events.append(message)

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    """Two relays sharing one PostgreSQL database and Redis prefix, so the page has a node
    list to show; it is loaded from the first."""
    provisioner = StoreProvisioner("production")
    env = provisioner.new_store_env()
    started = [
        RelayProcess(tmp_path / name, {"node_id": name, "presence_ttl": 3}, env=env)
        for name in ("relay-1", "relay-2")
    ]
    try:
        for node in started:
            node.start()
        yield started
    finally:
        problems = stop_relays(started)
        provisioner.cleanup()
        assert not problems, problems


@pytest.fixture
async def page(chromium_path: Path, tmp_path: Path) -> AsyncIterator[DevTools]:
    browser = Chromium(chromium_path, tmp_path / "chromium-profile")
    try:
        port = await asyncio.to_thread(browser.devtools_port, 30.0)
        targets = await asyncio.to_thread(_json_list, port)
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with connect(page_url, max_size=None, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        await asyncio.to_thread(browser.stop)


def _json_list(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        targets: list[dict[str, Any]] = json.loads(response.read())
        return targets


class Load:
    """A small, varied load, one burst per dashboard poll: live sends to a device that
    acks, a few to an offline device (the stored queue grows), one refused request of a
    rotating kind, and a new idle connection now and then."""

    def __init__(self, sender: Device, receiver: Device, offline: Device, other_url: str) -> None:
        self.sender = sender
        self.receiver = receiver
        self.offline = offline
        self.other_url = other_url  # idle devices go to the other node, in turn
        self.idle: list[Device] = []
        self.bursts = 0

    async def burst(self) -> None:
        self.bursts += 1
        live = [self.sender.send_message(self.receiver) for _ in range(8)]
        stored = [self.sender.send_message(self.offline) for _ in range(2)]
        answers = await asyncio.gather(*live, *stored)
        assert all(a["t"] == "ok" for a in answers), answers
        kind = self.bursts % 3
        if kind == 0:
            error_of(
                await self.sender.request({"t": "send", "rid": self.sender.next_rid()}), "bad_frame"
            )
        elif kind == 1:
            error_of(await self.sender.send_message(self.receiver, ts=1), "stale_timestamp")
        else:
            error_of(await self.sender.send_message(str(uuid.uuid4()), [1]), "unknown_user")
        if self.bursts % 2 == 0 and len(self.idle) < 6:
            url = self.other_url if len(self.idle) % 2 == 0 else self.sender.url
            self.idle.append(await new_user(url))

    async def close(self) -> None:
        for device in (self.sender, self.receiver, self.offline, *self.idle):
            await device.close()


async def history_samples(relay: RelayProcess, since: int | None = None) -> list[dict[str, Any]]:
    status, _, body = await relay.ahttp_get(
        "/v1/history" + ("" if since is None else f"?since={since}")
    )
    assert status == 200, body
    samples: list[dict[str, Any]] = orjson.loads(body)["samples"]
    return samples


async def load_before_opening(relay: RelayProcess, load: Load) -> list[dict[str, Any]]:
    """One burst per sample of the relay, until its history shows BEFORE_OPEN_SAMPLES seconds
    with messages in; those samples."""
    newest = (await history_samples(relay))[-1]["t_ms"]
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            await load.burst()
            next_sample = functools.partial(history_samples, relay, newest)
            await wait_until(next_sample, TIMEOUT_S, "the next history sample")
            samples = await history_samples(relay)
            newest = samples[-1]["t_ms"]
            busy = [s for s in samples if (s["messages_in"] or 0) > 0]
            if len(busy) >= BEFORE_OPEN_SAMPLES:
                return busy


async def test_dashboard_shows_live_charts(nodes: list[RelayProcess], page: DevTools) -> None:
    relay, other = nodes
    sender = await new_user(relay.url)
    receiver = await new_user(relay.url, auto_ack=True)
    (offline,) = await offline_user(relay.url)
    load = Load(sender, receiver, offline, other.url)
    try:
        await page.call("Page.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            {**VIEWPORT, "deviceScaleFactor": 1, "mobile": False},
        )
        before = await load_before_opening(relay, load)
        await page.call("Page.navigate", {"url": relay.http_url("/dashboard")})
        await page.event("Page.loadEventFired", timeout=30)

        # As soon as it opens, the page charts the seconds before it opened.
        state: dict[str, Any] = await page.evaluate(
            "window.dashboardState.polls > 0"
            " ? JSON.parse(JSON.stringify(window.dashboardState)) : window.dashboardNextPoll()"
        )
        assert state["ok"] and state["polls"] <= 2, state
        assert state["oldestMs"] <= before[0]["t_ms"], (state, before[0])
        assert state["samples"] >= len(before), state
        assert state["maxSeen"]["messagesIn"] > 0, state
        points = await page.evaluate(
            "document.querySelector('#chart-messages path.line')"
            ".getAttribute('d').split(/[ML]/).length - 1"
        )
        assert points >= BEFORE_OPEN_SAMPLES, points

        async with asyncio.timeout(TIMEOUT_S):
            while True:
                await load.burst()
                # Paced by the page itself: one burst per poll (/v1/history and /v1/stats).
                state = await page.evaluate("window.dashboardNextPoll()")
                seen = state["maxSeen"]
                listed = {n["id"] for n in state["last"]["nodes"]} if state["ok"] else set()
                if (
                    state["polls"] >= MIN_POLLS
                    and all(seen[k] > 0 for k in SHOWS_DATA)
                    and listed == {"relay-1", "relay-2"}
                ):
                    break
        assert state["ok"], state
        assert state["last"]["node_id"] == "relay-1"
        # Every chart drew its data (lines, or bars for errors) and titled both axes.
        drawn = await page.evaluate(
            "[...document.querySelectorAll('svg.chart')].map(svg => "
            "[svg.id, svg.querySelectorAll('path.line, rect').length, "
            "svg.querySelectorAll('text.title').length])"
        )
        for chart_id, lines, titles in drawn:
            assert lines >= 1 and titles == 2, (chart_id, lines, titles)
        table = await page.evaluate("document.getElementById('nodes').textContent")
        assert "relay-1" in table and "relay-2" in table

        metrics = await page.call("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"])
        shot = await page.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height, "scale": 1},
            },
        )
    finally:
        await load.close()
    png = base64.b64decode(shot["data"])
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    target = artifacts_dir() / "dashboard.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)


FIRST_POLL = (
    "window.dashboardState.polls > 0"
    " ? JSON.parse(JSON.stringify(window.dashboardState)) : window.dashboardNextPoll()"
)


async def open_dashboard(page: DevTools, url: str) -> dict[str, Any]:
    """Load `url` (after a blank page, so a new fragment reloads it) and return the page's
    state after its first poll."""
    for target in ("about:blank", url):
        await page.call("Page.navigate", {"url": target})
        await page.event("Page.loadEventFired", timeout=30)
    state: dict[str, Any] = await page.evaluate(FIRST_POLL)
    return state


async def test_dashboard_sends_the_admin_token_of_its_fragment(
    tmp_path: Path, page: DevTools
) -> None:
    """On the --admin-listen port of a relay with an admin token: given the token as
    `#token=`, the page polls the gated paths; without it, it says the token is needed."""
    token = "dash-" + secrets.token_hex(16)
    relay = RelayProcess(
        tmp_path / "relay",
        {"admin_listen": "127.0.0.1:0", "node_id": "admin-dash"},
        env={"RELAY_ADMIN_TOKEN": token},
    )
    try:
        relay.start()
        await page.call("Page.enable")
        dashboard = admin_base(relay) + "/dashboard"
        state = await open_dashboard(page, f"{dashboard}#token={token}")
        assert state["ok"], state
        assert state["last"]["node_id"] == "admin-dash"
        state = await open_dashboard(page, dashboard)
        assert not state["ok"], state
        status = await page.evaluate("document.getElementById('status-text').textContent")
        assert "admin token is needed" in status, status
    finally:
        assert not stop_relays([relay])
