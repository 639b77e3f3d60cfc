"""Batches of any size reuse a small set of compiled statements (workers/store.py, SQLite).

SQLite compiles each distinct statement text, and a multi-row VALUES or IN list of n rows
is a distinct text for each n. Slicing by a fixed size left a remainder of a new length
in most batches: fresh statements to compile every batch, which also pushed the common
ones out of the connection's statement cache. The store slices by powers of two, so
batches of every size share a few texts per statement, all within the cache.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from producer.contract import DepositIntent, intent_body
from workers.batch import build_batch
from workers.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.store import STATEMENTS_CACHED_MAX, Store, _chunks

NOW = 1_700_000_000_000
SIZES = range(1, 1_200, 19)  # 64 batch sizes, 1 to 1,198 intents


class Recording:
    """The store's connection, recording the statement texts it is asked to run."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.texts: set[str] = set()

    def execute(self, sql: str, *params):
        self.texts.add(sql)
        return self._conn.execute(sql, *params)

    def executemany(self, sql: str, rows):
        self.texts.add(sql)
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def _deposit(n: int, user: int) -> Candidate:
    intent = DepositIntent(kind="deposit", id=str(uuid.UUID(int=n, version=4)), user_id=user,
                           amount=100, nonce=f"nonce-{n:010d}", issued_at=1)
    sha = hashlib.sha256(intent_body(intent)).digest()
    return Candidate.of(f"{NOW + n}-0", NOW + n, intent, sha, "k")


def test_batches_of_every_size_compile_a_bounded_set_of_statements(tmp_path: Path) -> None:
    store = Store(tmp_path / "ledger.sqlite3", 1000, checkpoint_interval_ms=0)
    recording = Recording(store._conn)
    store._conn = recording
    try:
        epoch = store.bump_epoch()
        book, n = Book({a: 0 for a in SYSTEM_ACCOUNTS}), 0
        for size in SIZES:  # half new accounts, half known ones: every statement runs
            cands = [_deposit(n + i, 1 + (n + i) // 2) for i in range(size)]
            store.lookup([c.id for c in cands], [c.entry_id for c in cands])
            store.load_balances([c.user_id for c in cands])
            store.commit(build_batch(decide_batch(cands, book), store.heads, epoch, NOW + n))
            n += size
    finally:
        store.close()
    texts = len(recording.texts)
    # At most 10 lengths (512 down to 1) for each of the 9 statements whose length varies,
    # plus a few fixed ones. Slicing by 900 and 450 instead made 411 texts here.
    assert texts <= 9 * 10 + 10, f"{texts} distinct statements for {len(SIZES)} batch sizes"
    assert texts < STATEMENTS_CACHED_MAX


@given(st.lists(st.integers(), max_size=300), st.sampled_from([1, 2, 8, 64, 256]))
def test_chunks_cover_the_items_in_order_in_powers_of_two(items: list[int], size: int) -> None:
    pieces = list(_chunks(items, size))
    assert [x for piece in pieces for x in piece] == items
    lengths = [len(piece) for piece in pieces]
    assert all(0 < n <= size and n & (n - 1) == 0 for n in lengths)
    assert lengths == sorted(lengths, reverse=True)  # as few pieces as the sizes allow
