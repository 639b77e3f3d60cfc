"""Random bytes for intent ids and nonces, drawn from the OS CSPRNG a block at a time.

A producer needs fresh randomness twice per intent (a UUIDv7's random bits and a nonce).
One ``os.urandom`` per value is one ``getrandom`` system call each: an id and a nonce
cost 2.6 µs in a loop, 1.7 drawn here, where one call draws ``BLOCKS_PER_DRAW`` values
at once (docs/performance.md). The bytes are the same CSPRNG's.

Two ways a pool could hand out the same bytes twice, and so a duplicate id (a distinct
bet answered ``duplicate``) or nonce (answered ``replay``), are closed:
- a forked child must not reuse its parent's unspent bytes: the pool is dropped in
  the child (``os.register_at_fork``);
- two threads, or a signal handler interrupting a draw, must not take the same block:
  taking one is a single ``next()`` on a C iterator, which neither another thread nor
  Python code can interrupt halfway, and a refill replaces the iterator, never rewinds it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Final

BLOCK_BYTES: Final = 16  # the most one value needs (a nonce); an id uses 19 of its 32 hex digits
BLOCKS_PER_DRAW: Final = 256  # 4 KiB per getrandom call: ~128 intents
_BLOCK: Final = struct.Struct(f"{BLOCK_BYTES}s")


class RandomBlocks:
    """Hands out ``BLOCK_BYTES`` random bytes per call, never the same block twice."""

    def __init__(self, blocks_per_draw: int = BLOCKS_PER_DRAW) -> None:
        if blocks_per_draw < 1:
            raise ValueError("blocks_per_draw must be at least 1")
        self._draw_bytes = blocks_per_draw * BLOCK_BYTES
        self._blocks: Iterator[tuple[bytes]] = iter(())
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._blocks = iter(())

    def take(self) -> bytes:
        """``BLOCK_BYTES`` bytes from the OS CSPRNG that no other call was or will be given."""
        try:
            return next(self._blocks)[0]
        except StopIteration:  # two threads may both refill: each keeps only its own blocks
            blocks = self._blocks = _BLOCK.iter_unpack(os.urandom(self._draw_bytes))
            return next(blocks)[0]
