"""Logging: a line for people by default, or one JSON object a line for log collectors.

Structured fields travel as `extra={"fields": {...}}` and are printed as
`key=value` pairs (text) or as top-level keys (JSON). Callers pass only
metadata (addresses, user ids, device numbers, close codes, durations):
never a message body, key, signature or challenge.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import orjson

FIELDS_ATTR = "fields"
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    found = getattr(record, FIELDS_ATTR, None)
    return found if isinstance(found, Mapping) else {}


def _timestamp(created: float) -> str:
    """UTC, ISO 8601 with milliseconds: sortable, and the same on every node."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def _plain(value: Any) -> str:
    """A value as one token: quoted and escaped (JSON string rules) when it needs to be."""
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return orjson.dumps(text).decode("utf-8")
    return text


class TextFormatter(logging.Formatter):
    """`2026-01-01T12:00:00.000Z INFO relay.connection: connection closed code=1000 ...`."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record.created),
            record.levelname,
            f"{record.name}: {record.getMessage()}",
        ]
        parts += [f"{key}={_plain(value)}" for key, value in fields_of(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            payload[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode("utf-8")


class WorkerTag(logging.Filter):
    """Adds `worker=I` to every line of a worker of `relay serve --workers N`, whose lines
    share the parent's standard error with its siblings'."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, FIELDS_ATTR, {**fields_of(record), "worker": self._worker})
        return True


def setup_logging(
    level: str, fmt: str, stream: IO[str] | None = None, *, worker: int | None = None
) -> None:
    """Route every logger to standard error in the chosen format; replaces earlier handlers.
    `worker`: the index of this worker of `relay serve --workers N`, added to every line."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(WorkerTag(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The websockets library logs frames at DEBUG: never let it print message bytes.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
