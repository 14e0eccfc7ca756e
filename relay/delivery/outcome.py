"""The rules of a send's outcome per target device, pure: what is stored, delivered, dropped.

v1: a device is `delivered` when its ack came within the ack timeout; otherwise its envelope
is `stored` (pushed or not), except an `online` message, which is never stored: it is dropped.
"""

from __future__ import annotations

import enum


class Settled(enum.Enum):
    DELIVERED = "delivered"  # acked in time
    LATE = "late"  # pushed, no ack in time: store it now (a later ack deletes the copy)
    DROPPED = "dropped"  # an online message not acked in time: never stored


def settle(*, acked: bool, online: bool) -> Settled:
    """A pushed delivery once the wait for its ack is over."""
    if acked:
        return Settled.DELIVERED
    return Settled.DROPPED if online else Settled.LATE


def store_unpushed(*, online: bool) -> bool:
    """A delivery that could not be pushed (no connection, no room): stored unless online."""
    return not online
