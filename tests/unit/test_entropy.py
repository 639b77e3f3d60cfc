"""Pooled randomness never hands out the same bytes twice: not across a fork, not across
threads. A repeat would be a duplicate intent id (a distinct bet answered ``duplicate``)
or nonce (answered ``replay``)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import pytest

from producer.contract import new_intent_id, new_nonce
from producer.entropy import BLOCK_BYTES, RandomBlocks

TAKES = 2_000


def _from_child(make: Callable[[], bytes]) -> bytes:
    """What ``make`` returns in a forked child of this process (its state as of now)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.write(write_fd, make())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def _split(data: bytes) -> list[bytes]:
    return [data[i:i + BLOCK_BYTES] for i in range(0, len(data), BLOCK_BYTES)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_reuses_its_parents_unspent_blocks() -> None:
    """The parent drew a block (its pool holds the rest of the draw) before forking; what
    the child then takes and what the parent takes next must have nothing in common."""
    blocks = RandomBlocks(blocks_per_draw=TAKES * 2)
    first = blocks.take()
    child = _split(_from_child(lambda: b"".join(blocks.take() for _ in range(TAKES))))
    parent = [blocks.take() for _ in range(TAKES)]
    assert len(child) == TAKES
    assert not set(child) & {first, *parent}


def test_threads_never_take_the_same_block() -> None:
    """Eight threads taking from one pool refilled every four blocks, switching often."""
    blocks = RandomBlocks(blocks_per_draw=4)
    taken: list[list[bytes]] = [[] for _ in range(8)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=lambda out=out: out.extend(
            blocks.take() for _ in range(TAKES))) for out in taken]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    every = [block for out in taken for block in out]
    assert len(every) == 8 * TAKES
    assert all(len(block) == BLOCK_BYTES for block in every)
    assert len(set(every)) == len(every)


def test_ids_and_nonces_made_after_a_fork_differ_from_the_parents() -> None:
    """The producer's own pool (one per process) re-draws in a child too."""
    new_nonce(), new_intent_id()  # the parent's pool now holds unspent blocks
    theirs = set(_from_child(
        lambda: "\n".join(new_nonce() for _ in range(100)).encode()).decode().split("\n"))
    mine = {new_nonce() for _ in range(100)}
    assert len(theirs) == 100 and not mine & theirs


def test_a_pool_must_draw_at_least_one_block() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RandomBlocks(blocks_per_draw=0)
