"""The client SDK: an asyncio device that talks to the relay, with end-to-end encryption.

See docs/client.md. The entry point is :meth:`Client.open`.
"""

from protocol.client.backup import RecoveryKey
from protocol.client.client import Client, MessageHandler, ReceiptHandler
from protocol.client.errors import (
    AnswerTimeout,
    BackupConflict,
    BackupUnreadable,
    ClientError,
    ClientStopped,
    ConnectionLost,
    NotRegistered,
    RequestRefused,
    SendFailed,
    StoreError,
    StoreLocked,
    TlsSetupError,
    WrongPassphrase,
)
from protocol.client.group import GroupReceipt
from protocol.client.messages import (
    Backoff,
    ClientOptions,
    ClientStats,
    ConnectionChange,
    DeliveryReceipt,
    IncomingMessage,
    LinkTicket,
    SendReceipt,
)
from protocol.client.peers import IdentityChange
from protocol.client.store import KdfLimits, LocalStore
from protocol.client.tls import context_for, tls_context

__all__ = [
    "AnswerTimeout",
    "Backoff",
    "BackupConflict",
    "BackupUnreadable",
    "Client",
    "ClientError",
    "ClientOptions",
    "ClientStats",
    "ClientStopped",
    "ConnectionChange",
    "ConnectionLost",
    "DeliveryReceipt",
    "GroupReceipt",
    "IdentityChange",
    "IncomingMessage",
    "KdfLimits",
    "LinkTicket",
    "LocalStore",
    "MessageHandler",
    "NotRegistered",
    "ReceiptHandler",
    "RecoveryKey",
    "RequestRefused",
    "SendFailed",
    "SendReceipt",
    "StoreError",
    "StoreLocked",
    "TlsSetupError",
    "WrongPassphrase",
    "context_for",
    "tls_context",
]
