"""The garbage collector set for a server that runs for days with a steady heap.

Python's cyclic collector runs a young collection every 700 container allocations, and
from time to time an older one that walks every tracked object. A relay allocates a few
hundred containers per message (frames, futures, coroutines), nearly all freed by their
reference counts long before a collection sees them; and at start-up it loads some 40,000
objects (modules, classes, functions, the store's caches) that live as long as the process.
Two settings follow, measured in docs/benchmarks.md ("The garbage collector"):

- the start-up objects are frozen (`gc.freeze`) once the relay is ready: no collection
  walks them again;
- the young generation is collected every YOUNG_THRESHOLD allocations instead of 700.

Cycles made while serving are still collected; only how often the collector looks changes.
"""

from __future__ import annotations

import gc
import logging
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "settle_after_start"]

log = logging.getLogger(__name__)

YOUNG_THRESHOLD: Final = 10_000


def settle_after_start() -> None:
    """Collect what start-up left behind, freeze the rest, and space young collections."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    log.debug("%d start-up objects frozen out of collections", gc.get_freeze_count())
