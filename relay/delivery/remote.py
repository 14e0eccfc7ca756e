"""The delivery rules between nodes, as pure bookkeeping read against an injected clock.

`OriginLedger` is the origin's side: deliveries this node published to another node, from the
publish to the send's outcome and, for those it stored instead, for a while after (a late ack
still deletes the stored copy). `RecentAcks` is the device's node's side: ids a device acked
through remote deliveries, whose stored copies another node may still be deleting; pumps
delete them instead of pushing them, and a replaced connection hands them on.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Container, Sequence
from dataclasses import dataclass

from relay.clock import Clock

MAX_LATE = 200_000  # late remote deliveries remembered at once (oldest dropped)


@dataclass(frozen=True, slots=True)
class RemoteDelivery:
    """A delivery this node published to another node."""

    node: str
    user: str
    device: int
    message_id: bytes


class Answer(enum.Enum):
    """What an answer from the device's node (or a failed publish) means for a delivery."""

    RESOLVE = "resolve"  # the send still waits: tell it (acked or not)
    DELETE = "delete"  # it was stored after the ack timeout and is acked now: delete the copy
    IGNORE = "ignore"  # settled, forgotten, or a second answer


@dataclass(slots=True)
class _Pending:
    delivery: RemoteDelivery
    forget_at: float  # a send that never settled it (cancelled at shutdown) is dropped then
    answered: bool = False
    late_until: float | None = None  # set once this node stored it instead


class OriginLedger:
    """Remote deliveries of this node (the origin) awaiting their ack or kept as late."""

    def __init__(
        self, clock: Clock, *, ack_timeout_s: float, late_keep_s: float, first_ref: int
    ) -> None:
        self._clock = clock
        self._ack_timeout_s = ack_timeout_s
        self.late_keep_s = late_keep_s
        # Refs start where the caller says (at random), so acks meant for an earlier process
        # with this node id never match this one's deliveries.
        self._refs = itertools.count(first_ref)
        self._pending: dict[int, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def next_ref(self) -> int:
        """A ref for any request to another node that expects a reply."""
        return next(self._refs)

    def published(self, delivery: RemoteDelivery) -> int:
        """`delivery` is being published; its ref names it in the answer."""
        ref = self.next_ref()
        forget_at = self._clock.monotonic() + self._ack_timeout_s + self.late_keep_s
        self._pending[ref] = _Pending(delivery, forget_at)
        return ref

    def answered(self, ref: int, *, acked: bool) -> tuple[Answer, RemoteDelivery | None]:
        """The device's node answered (or the publish reached nobody: `acked=False`)."""
        pending = self._pending.get(ref)
        if pending is None:
            return Answer.IGNORE, None
        if pending.late_until is not None:
            if not acked:
                return Answer.IGNORE, None
            del self._pending[ref]  # stored after the timeout, acked since: delete it
            return Answer.DELETE, pending.delivery
        if pending.answered:
            return Answer.IGNORE, None
        pending.answered = True
        return Answer.RESOLVE, pending.delivery

    def settled(self, ref: int, *, stored: bool) -> None:
        """The send reached its outcome for this delivery. Stored ones are kept for a while:
        an ack that still comes deletes the stored copy (the driver calls this with no await
        before its store call, so that delete is queued after the insert)."""
        pending = self._pending.get(ref)
        if pending is None:
            return
        if not stored:
            del self._pending[ref]
            return
        pending.late_until = self._clock.monotonic() + self.late_keep_s

    def expire(self) -> list[int]:
        """Forget late deliveries past their keep time and unsettled ones past theirs."""
        now = self._clock.monotonic()
        gone = [
            ref
            for ref, p in self._pending.items()
            if (p.late_until is not None and p.late_until < now) or p.forget_at < now
        ]
        for ref in gone:
            del self._pending[ref]
        excess = len(self._pending) - MAX_LATE
        if excess > 0:  # the oldest first
            oldest = list(itertools.islice(self._pending, excess))
            for ref in oldest:
                del self._pending[ref]
            gone.extend(oldest)
        return gone


class RecentAcks:
    """Ids each device acked lately through remote deliveries (at most `max_ids` per device)."""

    def __init__(self, clock: Clock, *, keep_s: float, max_ids: int) -> None:
        self._clock = clock
        self.keep_s = keep_s
        self._max_ids = max_ids
        self._recent: dict[tuple[str, int], dict[bytes, float]] = {}

    def remember(self, user: str, device: int, ids: Sequence[bytes]) -> None:
        if not ids:
            return
        recent = self._recent.setdefault((user, device), {})
        until = self._clock.monotonic() + self.keep_s
        for mid in ids:
            recent.pop(mid, None)
            recent[mid] = until
        while len(recent) > self._max_ids:
            del recent[next(iter(recent))]

    def of(self, user: str, device: int) -> Container[bytes]:
        return self._recent.get((user, device), {})

    def latest(self, user: str, device: int) -> tuple[bytes, ...]:
        """The device's ids, newest last: what a replaced connection hands on."""
        return tuple(self._recent.get((user, device), {}))[-self._max_ids :]

    def expire(self) -> None:
        now = self._clock.monotonic()
        for key in list(self._recent):
            recent = self._recent[key]
            for mid in [m for m, until in recent.items() if until < now]:
                del recent[mid]
            if not recent:
                del self._recent[key]
