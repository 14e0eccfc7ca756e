"""What a client of the relay raises, from the wire connection up to the SDK.

The tree's root lives here, below the SDK, so that the errors of the wire
connection are the SDK's errors too (`protocol.client.errors` adds the rest).

ClientError            every error of a relay client
├── RequestRefused     the relay answered a request with an `error` frame
└── ConnectionLost     the connection closed before the answer came
    └── AnswerTimeout  no answer in time: the connection was dropped
"""

from __future__ import annotations

from protocol.errors import CloseCode, ErrorCode
from protocol.frames import Error


class ClientError(Exception):
    """Every error of a relay client (the wire connection's and the SDK's)."""


class RequestRefused(ClientError):
    """An `error` answer; `error` holds the frame with its typed details."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @property
    def code(self) -> ErrorCode:
        return self.error.code


class ConnectionLost(ClientError):
    """The connection ended; `code` is the WebSocket close code (None: it never opened fully)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection lost (close code {code}, {reason!r})")
        self.code = code
        self.reason = reason

    @property
    def close_code(self) -> CloseCode | None:
        """The close code as one of the protocol's, when it is one (4001 replaced, ...)."""
        try:
            return CloseCode(self.code) if self.code is not None else None
        except ValueError:
            return None


class AnswerTimeout(ConnectionLost):
    """A request went unanswered for too long; the connection was dropped as dead."""
