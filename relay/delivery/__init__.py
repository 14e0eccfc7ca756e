"""The rules of delivery as pure state machines: no asyncio, no sockets, no store inside.

`window.DeliveryWindow` holds one device connection's rules, `remote.OriginLedger` and
`remote.RecentAcks` those between nodes; `relay.device_session`, `relay.cluster` and
`relay.sending` are their drivers, which feed events in and carry the actions out.
"""

from relay.delivery.remote import Answer, OriginLedger, RecentAcks, RemoteDelivery
from relay.delivery.window import (
    AckActions,
    DeliveryWindow,
    EndActions,
    Fetch,
    FetchDone,
    LivePush,
    Phase,
    RemoteRef,
    SendOrigin,
    StoredFound,
)

__all__ = [
    "AckActions",
    "Answer",
    "DeliveryWindow",
    "EndActions",
    "Fetch",
    "FetchDone",
    "LivePush",
    "OriginLedger",
    "Phase",
    "RecentAcks",
    "RemoteDelivery",
    "RemoteRef",
    "SendOrigin",
    "StoredFound",
]
