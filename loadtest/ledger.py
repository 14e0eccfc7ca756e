"""The per-message ledger: what happened to every message id this process sent.

Each ledger entry is one `send` frame with exactly one recipient device, so a
message's fate is fully described by a few counters:

- `sent`: the frame was written to a socket (retries of the same id and nonce
  after a reconnect do not count again);
- `ok` / `errors`: the relay answered `ok` / an `error` (by code);
- `delivered`: the recipient received the id at least once;
- `duplicated`: deliveries of an id beyond its first;
- `delivered_after_ack`: deliveries of an id that arrived after the recipient
  had already acknowledged it (a subset of `duplicated`; the spec forbids them
  when the ack reached the relay);
- `delivered_after_confirmed_ack`: of those, deliveries after an ack the relay
  is known to have read (a later request on the same connection was answered:
  frames take effect in order), of messages sent once. An ack written just
  before its connection died may never have been read, so only this figure is a
  fault of the relay when connections and nodes fail;
- `retried_after_confirmed_ack`: the same for messages whose sender retried the
  send (same id and nonce, after losing its connection): a retry whose replay
  record was lost (Redis restarted, or the node holding the claim died before
  recording the outcome) is processed again and may be delivered again, as the
  protocol allows;
- `lost`: answered `ok` but never delivered by the end of the run;
- `unanswered`: sent, but neither `ok` nor `error` came by the end;
- `unexpected`: deliveries of ids this process never sent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

NONE, OK, ERROR = 0, 1, 2


class Entry:
    """One message id's record (slots: the ledger of a soak run holds millions)."""

    __slots__ = ("ack_confirmed", "acked", "answer", "deliveries", "resent", "scheduled", "sent")

    def __init__(self, scheduled: float) -> None:
        self.scheduled = scheduled
        self.sent = False
        self.answer = NONE
        self.deliveries = 0
        self.acked = False
        self.ack_confirmed = False
        self.resent = False  # written again after a reconnect (same id and nonce)

    @property
    def settled(self) -> bool:
        return self.answer == ERROR or (self.answer == OK and self.deliveries > 0)


@dataclass(frozen=True, slots=True)
class Counts:
    """The ledger's totals; `a + b` merges the counts of several processes."""

    scheduled: int = 0
    sent: int = 0
    ok: int = 0
    errors: int = 0
    delivered: int = 0
    duplicated: int = 0
    delivered_after_ack: int = 0
    delivered_after_confirmed_ack: int = 0
    retried_after_confirmed_ack: int = 0
    lost: int = 0
    unanswered: int = 0
    unexpected: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Counts) -> Counts:
        merged = Counter(self.errors_by_code)
        merged.update(other.errors_by_code)
        return Counts(
            scheduled=self.scheduled + other.scheduled,
            sent=self.sent + other.sent,
            ok=self.ok + other.ok,
            errors=self.errors + other.errors,
            delivered=self.delivered + other.delivered,
            duplicated=self.duplicated + other.duplicated,
            delivered_after_ack=self.delivered_after_ack + other.delivered_after_ack,
            delivered_after_confirmed_ack=(
                self.delivered_after_confirmed_ack + other.delivered_after_confirmed_ack
            ),
            retried_after_confirmed_ack=(
                self.retried_after_confirmed_ack + other.retried_after_confirmed_ack
            ),
            lost=self.lost + other.lost,
            unanswered=self.unanswered + other.unanswered,
            unexpected=self.unexpected + other.unexpected,
            errors_by_code=dict(sorted(merged.items())),
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Counts:
        """The counts of a report; a figure an older report lacks reads as 0."""
        numbers = {
            f.name: int(data.get(f.name, 0)) for f in fields(cls) if f.name != "errors_by_code"
        }
        return cls(**numbers, errors_by_code=dict(data.get("errors_by_code", {})))


class Ledger:
    """Message ids of this process and their fate; `settled` fires when nothing is open."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.errors_by_code: Counter[str] = Counter()
        self.duplicated = 0
        self.delivered_after_ack = 0
        self.delivered_after_confirmed_ack = 0
        self.retried_after_confirmed_ack = 0
        self.unexpected = 0
        self._open = 0
        self._closed_for_new = False
        self.settled = asyncio.Event()

    def schedule(self, msg_id: bytes, scheduled: float) -> Entry:
        entry = Entry(scheduled)
        self.entries[msg_id] = entry
        self._open += 1
        return entry

    def mark_sent(self, entry: Entry) -> None:
        if entry.sent:
            entry.resent = True
        entry.sent = True

    def answered(self, msg_id: bytes, ok: bool, code: str = "") -> Entry | None:
        """Record an answer; returns the entry if this was its first answer."""
        entry = self.entries.get(msg_id)
        if entry is None or entry.answer != NONE:
            return None
        was = entry.settled
        entry.answer = OK if ok else ERROR
        if not ok:
            self.errors_by_code[code] += 1
        self._after(entry, was)
        return entry

    def delivered(self, msg_id: bytes) -> Entry | None:
        """Record a delivery; returns the entry if this was its first delivery."""
        entry = self.entries.get(msg_id)
        if entry is None:
            self.unexpected += 1
            return None
        was = entry.settled
        entry.deliveries += 1
        if entry.deliveries > 1:
            self.duplicated += 1
            if entry.acked:
                self.delivered_after_ack += 1
            if entry.ack_confirmed and entry.resent:
                self.retried_after_confirmed_ack += 1
            elif entry.ack_confirmed:
                self.delivered_after_confirmed_ack += 1
            return None
        self._after(entry, was)
        return entry

    def acked(self, msg_id: bytes) -> None:
        entry = self.entries.get(msg_id)
        if entry is not None:
            entry.acked = True

    def ack_confirmed(self, msg_id: bytes) -> None:
        """The relay has read the ack of `msg_id` (a later request was answered)."""
        entry = self.entries.get(msg_id)
        if entry is not None:
            entry.ack_confirmed = True

    def close(self) -> None:
        """No more entries will be scheduled: `settled` may fire."""
        self._closed_for_new = True
        self._check()

    def _after(self, entry: Entry, was_settled: bool) -> None:
        if entry.settled and not was_settled:
            self._open -= 1
            self._check()

    def _check(self) -> None:
        if self._closed_for_new and self._open == 0:
            self.settled.set()

    def counts(self) -> Counts:
        scheduled = sent = ok = errors = lost = unanswered = delivered = 0
        for entry in self.entries.values():
            scheduled += 1
            sent += entry.sent
            if entry.answer == OK:
                ok += 1
                lost += entry.deliveries == 0
            elif entry.answer == ERROR:
                errors += 1
            elif entry.sent:
                unanswered += 1
            delivered += entry.deliveries > 0
        return Counts(
            scheduled=scheduled,
            sent=sent,
            ok=ok,
            errors=errors,
            delivered=delivered,
            duplicated=self.duplicated,
            delivered_after_ack=self.delivered_after_ack,
            delivered_after_confirmed_ack=self.delivered_after_confirmed_ack,
            retried_after_confirmed_ack=self.retried_after_confirmed_ack,
            lost=lost,
            unanswered=unanswered,
            unexpected=self.unexpected,
            errors_by_code=dict(sorted(self.errors_by_code.items())),
        )
