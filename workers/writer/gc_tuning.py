"""CPython settings for the writer's processes (the writer and its admission child).

Why the cyclic GC is tuned: a batch allocates tens of GC-tracked objects per intent
(candidates, decisions, rows, messages) that all stay alive until the batch is finished,
and reference counting frees them afterwards. CPython's young collection every 700 (or
even 50,000) net allocations therefore ran several times per batch, found nearly
everything alive, and cost the writer ~5 ms of GIL per run (docs/performance.md).
"""

from __future__ import annotations

import gc
import sys


def tune_runtime(gen0_threshold: int, switch_interval_us: int) -> None:
    """What exists now (modules, settings, the keyring) is frozen out of every collection,
    and a young collection runs only after ``gen0_threshold`` net new tracked objects:
    never while batches come and go, still a bound should something leak cycles.
    A shorter GIL switch interval lets the committer thread resume soon after each step."""
    sys.setswitchinterval(switch_interval_us / 1_000_000)
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
