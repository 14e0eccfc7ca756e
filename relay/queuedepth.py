"""The stored-message queue depth gauge (and the key backups gauge), refreshed from one count
query each every few seconds.

A count of every stored envelope is cheap once in a while and costly per message, so the
gauge is sampled, never maintained on the send and ack paths.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from relay.metrics import Metrics
from storage.errors import StorageError
from storage.interfaces import BackupStore, MessageQueue

log = logging.getLogger("relay.metrics")

INTERVAL_S: Final = 5.0


async def refresh_forever(
    messages: MessageQueue,
    metrics: Metrics,
    *,
    backups: BackupStore | None = None,
    interval_s: float = INTERVAL_S,
) -> None:
    """Set `relay_stored_messages` (and `relay_key_backups`) now and then every
    `interval_s`; a failed count is skipped (the gauge keeps its last value; /readyz reports
    the outage)."""
    while True:
        try:
            metrics.stored_messages.set(await messages.stored_count())
            if backups is not None:
                metrics.key_backups.set(await backups.count())
        except StorageError:
            log.debug("stored-message count skipped: store unavailable")
        await asyncio.sleep(interval_s)
