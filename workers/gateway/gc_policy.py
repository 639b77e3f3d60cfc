"""When the gateway's cyclic garbage collector runs.

Why: every WebSocket keeps a few hundred GC-tracked objects alive (tasks, protocol
objects, queues). CPython's full collection walks all of them, and it runs by itself
whenever the long-lived objects grew by a quarter: measured at 10,000 sockets, it stopped
every send for up to 1.3 s, a dozen times while the sockets connected and again later.
So the automatic full collection is turned off and one runs every
``gateway_gc_full_interval_s`` instead: memory stays bounded (cycles of closed sockets are
freed then), and the pause, still about 0.1 s per 1,000 sockets, comes at a known rate
(docs/performance.md). Young collections run after ``YOUNG_COLLECTION_OBJECTS`` net
new objects instead of CPython's 700: each confirmation allocates a few dozen, and at 700
they ran several times per millisecond of traffic (measured at 10,000 sockets and 3,000
confirmations/s: frame p99 70-108 ms at 700, 35-86 ms in four of five runs at 20,000).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Final

from workers.logs import get_logger

# A full collection runs after this many young-generation collections; at CPython's
# default pace that is never, so only the timed one below runs.
FULL_COLLECTION_NEVER: Final = 1_000_000_000
YOUNG_COLLECTION_OBJECTS: Final = 20_000  # net new tracked objects (CPython: 700)


def defer_full_collections() -> None:
    """What exists now (modules, settings) is frozen out of every collection; automatic
    full collections are off."""
    gc.collect()
    gc.freeze()
    _, gen1, _ = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, gen1, FULL_COLLECTION_NEVER)


async def collect_fully_every(interval_s: float) -> None:
    """A full collection every ``interval_s``, until cancelled; its pause is logged."""
    log = get_logger("betstream.gateway")
    while True:
        await asyncio.sleep(interval_s)
        started = time.perf_counter()
        found = gc.collect()
        log.info("gateway.gc_full", pause_ms=round((time.perf_counter() - started) * 1000),
                 collected=found)
