"""The one low-level client of the wire protocol: a WebSocket to the relay, typed frames.

The SDK (`protocol.client`), the load-test devices (`loadtest.device`) and the
end-to-end tests' helper (`tests/e2e/support.py`) all build on
:class:`WireConnection`.
"""

from protocol.wire.connection import (
    CONNECT_ERRORS,
    AnswerHandler,
    PushHandler,
    ServerPush,
    Undecodable,
    WireConnection,
    WireOptions,
)
from protocol.wire.errors import AnswerTimeout, ClientError, ConnectionLost, RequestRefused

__all__ = [
    "CONNECT_ERRORS",
    "AnswerHandler",
    "AnswerTimeout",
    "ClientError",
    "ConnectionLost",
    "PushHandler",
    "RequestRefused",
    "ServerPush",
    "Undecodable",
    "WireConnection",
    "WireOptions",
]
