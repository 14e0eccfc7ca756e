# Helpers here take an explicit `timeout` (seconds) on purpose: every wait is bounded.
# ruff: noqa: ASYNC109
"""End-to-end test support: a real relay subprocess and a client that shows the wire.

The connection is `protocol.wire.WireConnection`, the one low-level client; the
frames tests send and read are plain dicts, encoded here with msgpack
(``use_bin_type=True``) or, for the JSON sub-protocol, with orjson and byte
strings as unpadded base64url, and decoded here too: what the relay sends is
checked against spec/protocol-v1.md independently of `protocol`'s codec.

No test synchronises by sleeping: every wait is on a frame, a close, a process
line or a condition, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import orjson
from websockets.asyncio.client import ClientConnection

from protocol.codec import WireFormat
from protocol.payloads import auth_payload, link_payload, register_payload
from protocol.signatures import IdentityKeyPair, KeyScheme
from protocol.wire import ConnectionLost, ServerPush, WireConnection, WireOptions

REPO_ROOT = Path(__file__).resolve().parents[2]

MSGPACK = "relay.v1+msgpack"
JSON = "relay.v1+json"
PROTOS = {"msgpack": MSGPACK, "json": JSON}

SPEC_ERROR_CODES = frozenset(
    {
        "bad_frame",
        "unknown_type",
        "too_large",
        "unauthenticated",
        "auth_failed",
        "bad_signature",
        "rate_limited",
        "replay",
        "stale_timestamp",
        "mismatched_devices",
        "stale_devices",
        "unknown_user",
        "unknown_device",
        "conflict",
        "forbidden",
        "unavailable",
        "internal",
    }
)

# Fields that are byte strings wherever they appear (spec §1). `id` is a byte
# string for messages but an integer inside a pre-key ({id, key, ...}).
BYTE_FIELDS = frozenset(
    {"nonce", "id", "body", "identity_key", "signature", "key", "message_id", "blob", "access_key"}
)
INT_FIELDS = frozenset(
    {
        "rid",
        "device",
        "registration_id",
        "type",
        "ts",
        "server_ts",
        "server_time",
        "queued",
        "prekeys",
        "pq_prekeys",
        "from_device",
        "retry_after_ms",
        "created",
        "last_seen",
        "signed_prekey_age_s",
        "version",
        "updated",
    }
)
INT_LIST_FIELDS = frozenset({"missing", "extra", "stale", "delivered", "stored"})
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")

DEFAULT_TIMEOUT = 10.0
READY_LINE = re.compile(r"^relay: serving on (wss?)://127\.0\.0\.1:(\d+)/v1/ws$")


# --------------------------------------------------------------------------- relay process


def stop_relays(relays: list[RelayProcess]) -> list[str]:
    """Stop every relay; the problems found (a relay that exited by itself, a stop that failed)."""
    problems: list[str] = []
    for r in relays:
        if r.proc is None:
            continue
        crashed = r.proc.poll() is not None and r.proc.returncode not in (0, -9)
        try:
            r.stop()
        except RuntimeError as exc:
            problems.append(str(exc))
        if crashed:
            problems.append(f"relay exited by itself with {r.proc.returncode}\n{r.stderr_tail()}")
    return problems


# Every test registers its users from 127.0.0.1, many more than an hourly per-address budget
# allows; a test of that limit sets it.
TEST_DEFAULTS: Mapping[str, Any] = {"max_registrations_per_address": 0}


class RelayProcess:
    """A relay server subprocess (`python -m relay serve`) on a port it picks itself, with
    TEST_DEFAULTS under the options given."""

    def __init__(
        self,
        data_dir: Path,
        options: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.extra_env = dict(env or {})
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.options = {**TEST_DEFAULTS, **(options or {})}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.scheme = "ws"  # "wss" when the relay serves TLS (its ready line says so)
        self.startup_lines: list[str] = []  # stdout up to and with the ready line
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_path = self.data_dir.parent / f"{self.data_dir.name}.stderr.log"
        self._starts = 0

    # -- command line

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir),
        ]
        for name, value in self.options.items():
            if value is None:
                continue
            if value is True:  # a switch such as --migrate
                argv.append("--" + name.replace("_", "-"))
                continue
            if value is False:  # a switch turned off: --no-migrate
                argv.append("--no-" + name.replace("_", "-"))
                continue
            argv += ["--" + name.replace("_", "-"), str(value)]
        return argv

    @property
    def url(self) -> str:
        assert self.port is not None, "relay not started"
        return f"{self.scheme}://127.0.0.1:{self.port}/v1/ws"

    def http_url(self, path: str) -> str:
        assert self.port is not None, "relay not started"
        return f"{self.scheme.replace('ws', 'http')}://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- lifecycle (blocking; use the a* variants from async code)

    def start(self) -> RelayProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        # The relay reads RELAY_* from the environment: make sure none leak in.
        for key in list(env):
            if key.startswith("RELAY_"):
                del env[key]
        env.update(self.extra_env)
        stderr = open(self._stderr_path, "a", encoding="utf-8")  # noqa: SIM115
        stderr.write(f"\n===== start #{self._starts}: {' '.join(self.argv())}\n")
        stderr.flush()
        self._stdout_lines = queue.Queue()
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
        )
        stderr.close()
        threading.Thread(
            target=self._pump_stdout, args=(self.proc, self._stdout_lines), daemon=True
        ).start()
        deadline = time.monotonic() + self.start_timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError(
                    f"relay did not report its port within {self.start_timeout}s; "
                    f"stdout={seen!r}\n{self.stderr_tail()}"
                )
            try:
                line = self._stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(
                    f"relay exited with {code} before listening; stdout={seen!r}\n"
                    f"{self.stderr_tail()}"
                )
            seen.append(line)
            match = READY_LINE.match(line.strip())
            if match:
                self.scheme, self.port = match.group(1), int(match.group(2))
                self.startup_lines = seen
                return self

    @staticmethod
    def _pump_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait for the exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(
                    f"relay did not stop within {timeout}s of SIGTERM\n{self.stderr_tail()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL: the crash of a relay process."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait()

    def restart(self) -> RelayProcess:
        """Stop (if still running) and start again on the same data dir, a new port."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self.port = None
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self, lines: int = 60) -> str:
        try:
            text = self._stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no stderr)"
        return "relay stderr (tail):\n" + "\n".join(text.splitlines()[-lines:])

    async def astart(self) -> RelayProcess:
        return await asyncio.to_thread(self.start)

    async def astop(self, timeout: float = 15.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    async def arestart(self) -> RelayProcess:
        return await asyncio.to_thread(self.restart)

    # -- plain HTTP

    def http_get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.http_url(path), timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    async def ahttp_get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(self.http_get, path)


# --------------------------------------------------------------------------- wire encoding


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return b64url(bytes(obj))
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(frame: Any, proto: str) -> bytes | str:
    """One frame as the WebSocket message of the given sub-protocol."""
    if proto == JSON:
        return orjson.dumps(frame, default=_json_default).decode("utf-8")
    return msgpack.packb(frame, use_bin_type=True)


def _is_prekey_map(d: Mapping[str, Any]) -> bool:
    return "key" in d


def _json_bytes_in(value: Any, key: str | None, parent: Mapping[str, Any] | None) -> Any:
    """Turn the base64url strings of byte fields back into bytes (JSON decoding)."""
    if isinstance(value, dict):
        return {k: _json_bytes_in(v, k, value) for k, v in value.items()}
    if isinstance(value, list):
        if key == "ids":
            return [unb64url(v) if isinstance(v, str) else v for v in value]
        return [_json_bytes_in(v, None, None) for v in value]
    if isinstance(value, str) and key in BYTE_FIELDS:
        if key == "id" and parent is not None and _is_prekey_map(parent):
            return value
        return unb64url(value)
    return value


def wire_violations(frame: Any, proto: str, path: str = "") -> list[str]:
    """Where a received frame breaks the wire format of spec §1 (types of known fields)."""
    out: list[str] = []
    if not isinstance(frame, dict):
        return [f"{path or 'frame'} is {type(frame).__name__}, not a map"]
    for k, v in frame.items():
        where = f"{path}.{k}" if path else k
        if not isinstance(k, str):
            out.append(f"{where}: key is not a string")
            continue
        if k in BYTE_FIELDS and not (k == "id" and _is_prekey_map(frame)):
            if proto == JSON:
                if not isinstance(v, str) or not _B64URL.match(v) or len(v) % 4 == 1:
                    out.append(f"{where}: {v!r} is not unpadded base64url")
            elif not isinstance(v, bytes):
                out.append(f"{where}: {type(v).__name__}, expected msgpack bin")
        elif k == "id" or k in INT_FIELDS:
            if isinstance(v, bool) or not isinstance(v, int):
                out.append(f"{where}: {v!r} is not an integer")
        elif k in INT_LIST_FIELDS:
            if not isinstance(v, list) or any(
                isinstance(x, bool) or not isinstance(x, int) for x in v
            ):
                out.append(f"{where}: {v!r} is not a list of integers")
        elif k == "ids":
            for i, x in enumerate(v if isinstance(v, list) else [v]):
                ok = isinstance(x, str) if proto == JSON else isinstance(x, bytes)
                if not ok:
                    out.append(f"{where}[{i}]: {type(x).__name__}")
        elif k in ("user", "from", "code", "message", "t", "key_scheme") and not isinstance(v, str):
            out.append(f"{where}: {v!r} is not a string")
        if isinstance(v, dict):
            out += wire_violations(v, proto, where)
        elif isinstance(v, list) and k not in ("ids", *INT_LIST_FIELDS):
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    out += wire_violations(item, proto, f"{where}[{i}]")
    return out


def decode(message: bytes | str, proto: str) -> tuple[dict[str, Any], list[str]]:
    """A received WebSocket message as a frame dict, plus wire-format violations."""
    problems: list[str] = []
    if proto == JSON:
        if not isinstance(message, str):
            problems.append("JSON sub-protocol but the server sent a binary frame")
        raw = orjson.loads(message)
        problems += wire_violations(raw, proto)
        frame = _json_bytes_in(raw, None, None)
    else:
        if not isinstance(message, bytes):
            problems.append("msgpack sub-protocol but the server sent a text frame")
            message = message.encode()
        frame = msgpack.unpackb(message, raw=False, strict_map_key=False)
        problems += wire_violations(frame, proto)
    if not isinstance(frame, dict):
        raise AssertionError(f"server sent a non-map frame: {frame!r}")
    return frame, problems


# --------------------------------------------------------------------------- small helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> bytes:
    return uuid.uuid4().bytes


def new_nonce() -> bytes:
    return secrets.token_bytes(24)


def is_canonical_uuid(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def signed_prekey(identity: IdentityKeyPair, key_id: int, key: bytes | None = None) -> dict:
    key = key if key is not None else b"\x05" + secrets.token_bytes(32)
    return {"id": key_id, "key": key, "signature": identity.sign(key)}


def prekey(key_id: int, key: bytes | None = None) -> dict:
    return {"id": key_id, "key": key if key is not None else b"\x05" + secrets.token_bytes(32)}


def pq_key_bytes() -> bytes:
    """A stand-in for libsignal's ML-KEM-1024 public key: 1569 bytes starting 0x08."""
    return b"\x08" + secrets.token_bytes(1568)


def pq_prekey(identity: IdentityKeyPair, key_id: int, key: bytes | None = None) -> dict:
    key = key if key is not None else pq_key_bytes()
    return {"id": key_id, "key": key, "signature": identity.sign(key)}


def entries(
    devices: Iterable[int] | Mapping[int, bytes],
    body: bytes | None = None,
    *,
    type_: int = 2,
    registration_ids: Mapping[int, int] | None = None,
) -> list[dict]:
    """The `devices` list of a send: one entry per device, with its own body."""
    out = []
    for d in devices:
        if isinstance(devices, Mapping):
            b = devices[d]
        else:
            b = body if body is not None else secrets.token_bytes(24) + bytes([d % 256])
        entry: dict[str, Any] = {"device": d, "type": type_, "body": b}
        if registration_ids and d in registration_ids:
            entry["registration_id"] = registration_ids[d]
        out.append(entry)
    return out


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Re-evaluate an async predicate (each call a real server round trip) until truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


# --------------------------------------------------------------------------- the raw client


def _typed_push(push: ServerPush) -> None:
    """The typed view is not used here: tests read the dicts of the tap."""


class NoFrame(AssertionError):
    """No matching frame arrived within the timeout."""


class ServerClosed(Exception):
    """The server closed the connection while we were waiting for something."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed by the server: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


class Device:
    """One device's connection to the relay, seen as the frame dicts of the wire.

    The connection is a `protocol.wire.WireConnection` (sub-protocol, challenge,
    reader, close codes); on top, this keeps what tests need: every message
    decoded independently of `protocol`'s codec and checked against the wire
    format (its ``tap``), requests and answers as dicts matched by ``rid``,
    and a buffer of everything else (pushes, errors without a ``rid``, answers
    nobody waits for) read by ``next_push``. Bad input goes out with ``send_raw``.
    """

    def __init__(
        self,
        url: str,
        *,
        proto: str = "msgpack",
        scheme: KeyScheme | str = KeyScheme.ED25519,
        identity: IdentityKeyPair | None = None,
        registration_id: int | None = None,
        user: str | None = None,
        device: int | None = None,
        auto_ack: bool = False,
    ) -> None:
        self.url = url
        self.proto = PROTOS.get(proto, proto)
        self.scheme = KeyScheme(scheme)
        self.identity = identity or IdentityKeyPair.generate(self.scheme)
        self.registration_id = registration_id
        self.user = user
        self.device = device
        self.auto_ack = auto_ack
        self.conn: WireConnection | None = None
        self.challenge: dict[str, Any] | None = None
        self.auth_answer: dict[str, Any] | None = None
        self.violations: list[str] = []
        self.received: list[dict[str, Any]] = []  # every frame, in order, this connection
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pushes: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._acks: set[asyncio.Task[bool]] = set()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._rid = secrets.randbelow(1_000_000) + 1
        self.connect_kwargs: dict[str, Any] = {}  # WireOptions fields, e.g. ssl, max_queue

    def __repr__(self) -> str:
        return f"Device(user={self.user}, device={self.device}, proto={self.proto})"

    @property
    def address(self) -> tuple[str | None, int | None]:
        return (self.user, self.device)

    @property
    def ws(self) -> ClientConnection | None:
        """The WebSocket itself, for tests that read or write past the helper."""
        return None if self.conn is None else self.conn.websocket

    # -- connection

    async def connect(
        self, subprotocols: Sequence[str] | str | None = "default", **kwargs: Any
    ) -> dict[str, Any]:
        """Open the connection and return the challenge frame."""
        await self.close()
        offer = [self.proto] if subprotocols == "default" else list(subprotocols or ())
        self._pending = {}
        self._pushes = []
        self.received = []
        self._closed = asyncio.Event()
        self.close_code = None
        self.close_reason = None
        options = WireOptions(
            fmt=WireFormat(self.proto) if self.proto in tuple(WireFormat) else WireFormat.MSGPACK,
            offer=tuple(offer),
            open_timeout=DEFAULT_TIMEOUT,
            max_frame_bytes=None,
            compression=True,
        )
        options = dataclasses.replace(options, **{**self.connect_kwargs, **kwargs})
        try:
            self.conn = await WireConnection.open(
                self.url, options, on_push=_typed_push, on_close=self._ended, tap=self._tap
            )
        except ConnectionLost as exc:  # closed before (or instead of) the challenge
            self.close_code, self.close_reason = exc.code, exc.reason
            self._closed.set()
            raise ServerClosed(exc.code, exc.reason) from None
        if self.conn.websocket.subprotocol is None and offer:
            raise AssertionError(f"server accepted {offer!r} without choosing a sub-protocol")
        self.proto = self.conn.fmt.value
        self.challenge = await self.next_push("challenge")
        return self.challenge

    def _tap(self, message: bytes | str, fmt: WireFormat) -> None:
        try:
            frame, problems = decode(message, fmt.value)
        except Exception as exc:  # a frame we cannot even decode
            self.violations.append(f"undecodable frame {message[:80]!r}: {exc!r}")
            return
        if problems:
            self.violations += [f"{frame.get('t')}: {p}" for p in problems]
        self.received.append(frame)
        rid = frame.get("rid")
        if frame.get("t") in ("ok", "error") and rid in self._pending:
            fut = self._pending.pop(rid)
            if not fut.done():
                fut.set_result(frame)
            return
        if frame.get("t") == "deliver" and self.auto_ack and self.conn is not None:
            task = asyncio.create_task(self.conn.ack([frame["id"]]))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
        self._pushes.append(frame)
        self._arrived.set()

    def _ended(self, conn: WireConnection) -> None:
        self.close_code = conn.close_code
        self.close_reason = conn.close_reason
        self._closed.set()
        exc = ServerClosed(self.close_code, self.close_reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._arrived.set()

    def stop_reading(self) -> None:
        """Read nothing more from the socket: a client that stalls."""
        assert self.conn is not None, "not connected"
        self.conn.stop_reading()

    def _check_violations(self) -> None:
        if self.violations:
            raise AssertionError("wire-format violations: " + "; ".join(self.violations[:10]))

    # -- raw I/O

    def next_rid(self) -> int:
        self._rid = (self._rid + 1) % 2**32 or 1
        return self._rid

    async def send_raw(self, frame: Any) -> None:
        """Send a frame dict (encoded for this sub-protocol) or raw bytes/str as is."""
        assert self.conn is not None, "not connected"
        data = frame if isinstance(frame, bytes | str) else encode(frame, self.proto)
        try:
            await self.conn.send_raw(data)
        except ConnectionLost as exc:
            raise ServerClosed(exc.code, exc.reason) from None

    async def request(
        self, frame: dict[str, Any], timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Send a request and return its answer (``ok`` or ``error``), matched by rid."""
        frame = dict(frame)
        if "rid" not in frame:
            frame["rid"] = self.next_rid()
        rid = frame["rid"]
        if self._closed.is_set():
            raise ServerClosed(self.close_code, self.close_reason)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.send_raw(frame)
        except ServerClosed:
            self._pending.pop(rid, None)
            await self.wait_closed(DEFAULT_TIMEOUT)
            raise ServerClosed(self.close_code, self.close_reason) from None
        try:
            answer = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(rid, None)
            raise AssertionError(f"no answer to {frame.get('t')} rid={rid} in {timeout}s") from None
        self._check_violations()
        return answer

    async def request_ok(self, frame: dict[str, Any], **kw: Any) -> dict[str, Any]:
        answer = await self.request(frame, **kw)
        assert answer["t"] == "ok", f"{frame.get('t')} refused: {answer}"
        return answer

    async def next_push(
        self,
        t: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pred: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The oldest buffered frame of type ``t`` (and matching ``pred``), waiting for one."""

        async def wait() -> dict[str, Any]:
            while True:
                for i, frame in enumerate(self._pushes):
                    if (t is None or frame.get("t") == t) and (pred is None or pred(frame)):
                        return self._pushes.pop(i)
                if self._closed.is_set():
                    raise ServerClosed(self.close_code, self.close_reason)
                self._arrived.clear()
                await self._arrived.wait()

        try:
            frame = await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise NoFrame(
                f"{self!r}: no {t or 'frame'} within {timeout}s; buffered: "
                f"{[f.get('t') for f in self._pushes]}"
            ) from None
        self._check_violations()
        return frame

    async def no_push(
        self,
        t: str | None = None,
        timeout: float = 0.5,
        pred: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Assert that no frame of type ``t`` arrives within ``timeout`` (a bounded wait)."""
        try:
            frame = await self.next_push(t, timeout=timeout, pred=pred)
        except (NoFrame, ServerClosed):
            return
        raise AssertionError(f"unexpected {frame.get('t')}: {frame}")

    def buffered(self, t: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self._pushes if t is None or f.get("t") == t]

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_code

    async def closed_code(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait for the server to close the connection; the close code it sent."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self!r}: connection still open after {timeout}s") from None
        return self.close_code

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), DEFAULT_TIMEOUT)
            self.conn = None

    # -- handshake

    def register_frame(
        self,
        *,
        link_by: Device | None = None,
        token: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        assert self.challenge is not None
        frame: dict[str, Any] = {
            "t": "register",
            "rid": self.next_rid(),
            "identity_key": self.identity.public_key,
            "key_scheme": self.scheme.value,
            "signature": self.identity.sign(
                register_payload(self.challenge["nonce"], self.identity.public_key)
            ),
        }
        if self.registration_id is not None:
            frame["registration_id"] = self.registration_id
        if token is not None:
            frame["token"] = token
        if link_by is not None:
            target = user or link_by.user
            assert target is not None and link_by.device is not None
            frame["user"] = target
            frame["link"] = {
                "device": link_by.device,
                "signature": link_by.identity.sign(link_payload(target, self.identity.public_key)),
            }
        return frame

    async def register(
        self, *, link_by: Device | None = None, token: str | None = None, expect_ok: bool = True
    ) -> dict[str, Any]:
        """Register (a new user, or a device linked by ``link_by``) on a fresh connection."""
        if self.ws is None or self.is_closed:
            await self.connect()
        answer = await self.request(self.register_frame(link_by=link_by, token=token))
        if expect_ok:
            assert answer["t"] == "ok", f"register refused: {answer}"
        if answer["t"] == "ok":
            self.user = answer["user"]
            self.device = answer["device"]
            self.auth_answer = answer
        return answer

    def auth_frame(self, challenge: bytes | None = None) -> dict[str, Any]:
        assert self.user is not None and self.device is not None
        nonce = challenge if challenge is not None else self.challenge["nonce"]  # type: ignore[index]
        return {
            "t": "auth",
            "rid": self.next_rid(),
            "user": self.user,
            "device": self.device,
            "signature": self.identity.sign(auth_payload(nonce, self.user, self.device)),
        }

    async def auth(self, *, expect_ok: bool = True) -> dict[str, Any]:
        """Authenticate on a fresh connection (connecting first if needed)."""
        if self.ws is None or self.is_closed:
            await self.connect()
        answer = await self.request(self.auth_frame())
        if expect_ok:
            assert answer["t"] == "ok", f"auth refused: {answer}"
            self.auth_answer = answer
        return answer

    async def reconnect(self, **kw: Any) -> dict[str, Any]:
        """Close this connection (if any), open a new one and authenticate."""
        await self.close()
        await self.connect(**kw)
        return await self.auth()

    # -- requests the tests use a lot

    async def send_message(
        self,
        to: Device | str,
        devices: Iterable[int] | Sequence[Mapping[str, Any]] | None = None,
        *,
        body: bytes | None = None,
        type_: int = 2,
        online: bool | None = None,
        id: bytes | None = None,
        nonce: bytes | None = None,
        ts: int | None = None,
        registration_ids: Mapping[int, int] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A `send` frame to a user (or a Device's user), returning the answer."""
        frame = self.send_frame(
            to,
            devices,
            body=body,
            type_=type_,
            online=online,
            id=id,
            nonce=nonce,
            ts=ts,
            registration_ids=registration_ids,
        )
        if extra:
            frame.update(extra)
        return await self.request(frame, timeout=timeout)

    def send_frame(
        self,
        to: Device | str,
        devices: Iterable[int] | Sequence[Mapping[str, Any]] | None = None,
        *,
        body: bytes | None = None,
        type_: int = 2,
        online: bool | None = None,
        id: bytes | None = None,
        nonce: bytes | None = None,
        ts: int | None = None,
        registration_ids: Mapping[int, int] | None = None,
    ) -> dict[str, Any]:
        if isinstance(to, Device):
            user = to.user
            if devices is None:
                devices = [to.device]  # type: ignore[list-item]
        else:
            user = to
        assert devices is not None, "name the recipient devices"
        devices = list(devices)
        if devices and isinstance(devices[0], Mapping):
            device_list = [dict(d) for d in devices]  # type: ignore[arg-type]
        else:
            device_list = entries(
                devices,  # type: ignore[arg-type]
                body,
                type_=type_,
                registration_ids=registration_ids,
            )
        frame: dict[str, Any] = {
            "t": "send",
            "rid": self.next_rid(),
            "id": id if id is not None else new_id(),
            "to": user,
            "ts": ts if ts is not None else now_ms(),
            "nonce": nonce if nonce is not None else new_nonce(),
            "devices": device_list,
        }
        if online is not None:
            frame["online"] = online
        return frame

    async def ack(self, *ids: bytes) -> None:
        await self.send_raw({"t": "ack", "ids": list(ids)})  # as given: tests ack bad ids too

    async def sync(self) -> dict[str, Any]:
        """A round trip: once answered, every earlier frame of this connection took effect."""
        return await self.request_ok({"t": "keys.count"})

    async def drain(
        self, *, ack: bool = True, timeout: float = DEFAULT_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Every deliver up to the one `queue_empty` (acking as they come, if asked)."""
        got: list[dict[str, Any]] = []
        while True:
            frame = await self.next_push(
                timeout=timeout, pred=lambda f: f.get("t") in ("deliver", "queue_empty")
            )
            if frame["t"] == "queue_empty":
                return got
            got.append(frame)
            if ack:
                await self.ack(frame["id"])

    async def upload(self, **fields: Any) -> dict[str, Any]:
        return await self.request({"t": "keys.upload", **fields})

    async def fetch(self, user: str, device: int | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"t": "keys.fetch", "user": user}
        if device is not None:
            frame["device"] = device
        return await self.request(frame)


async def new_user(url: str, **kw: Any) -> Device:
    """A connected, registered device 1 of a new user."""
    dev = Device(url, **kw)
    await dev.register()
    return dev


async def stopped_reader(url: str) -> Device:
    """A registered device that takes its `queue_empty` and then reads nothing more (a
    client-side queue of one message, no recv at all): what the relay writes to it fills the
    TCP window, then the relay's own buffers."""
    reader = Device(url)
    reader.connect_kwargs = {"max_queue": 1}
    await reader.register()
    await reader.next_push("queue_empty")
    reader.stop_reading()
    return reader


async def queued_on_return(reader: Device) -> int:
    """What the relay holds stored for `reader`'s device: `queued` of a new connection's
    `auth.ok`."""
    again = Device(reader.url, identity=reader.identity, user=reader.user, device=reader.device)
    again.connect_kwargs = {}
    queued = int((await again.auth())["queued"])
    await again.close()
    return queued


async def link_device(first: Device, **kw: Any) -> Device:
    """A new device of ``first``'s user, linked by ``first``, connected."""
    dev = Device(first.url, **kw)
    await dev.register(link_by=first)
    return dev


async def offline_user(url: str, devices: int = 1, **kw: Any) -> list[Device]:
    """A user with N devices, none of them connected any more."""
    first = await new_user(url, **kw)
    devs = [first]
    for _ in range(devices - 1):
        devs.append(await link_device(first, **kw))
    for d in devs:
        await d.close()
    return devs


def error_of(answer: Mapping[str, Any], code: str) -> None:
    assert answer.get("t") == "error", f"expected error {code}, got {answer}"
    assert answer.get("code") == code, f"expected error {code}, got {answer}"
    assert isinstance(answer.get("message"), str), f"error without message: {answer}"
