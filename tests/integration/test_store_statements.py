"""Batches of any size reuse a small set of compiled statements (workers/adapters/ledger_store.py, SQLite).

SQLite compiles each distinct statement text, and a multi-row VALUES or IN list of n rows
is a distinct text for each n. Slicing by a fixed size left a remainder of a new length
in most batches: fresh statements to compile every batch, which also pushed the common
ones out of the connection's statement cache. The store slices by powers of two, so
batches of every size share a few texts per statement, all within the cache.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from producer.contract import BetIntent, DepositIntent, SettleIntent
from tests.support import candidate
from workers.adapters.ledger_store import STATEMENTS_CACHED_MAX, Store
from workers.core.batch_rows import build_batch
from workers.core.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch

NOW = 1_700_000_000_000
SIZES = range(1, 1_200, 19)  # 64 batch sizes, 1 to 1,198 intents
USERS = 700  # accounts: the first batches open them, later ones find them known


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


def _batch(n: int, size: int, placed: list[str]) -> list[Candidate]:
    """Deposits (to new and known accounts), bets, and settlements of earlier bets."""
    cands = []
    for i in range(n, n + size):
        common = {"id": str(uuid.UUID(int=i, version=4)), "user_id": 1 + i % USERS,
                  "nonce": f"nonce-{i:010d}", "issued_at": 1}
        if i % 3 == 0:
            intent = DepositIntent(kind="deposit", amount=1_000, **common)
        elif i % 3 == 1 or not placed:
            placed.append(common["id"])
            intent = BetIntent(kind="bet", amount=10, market="m", selection="home", odds="2.50",
                               **common)
        else:
            intent = SettleIntent(kind="settle", bet_id=placed.pop(0), outcome="won", **common)
        cands.append(candidate(intent, NOW + i))
    return cands


@pytest.fixture(scope="module")
def statement_texts(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every statement text the store ran for batches of 64 sizes, as the writer runs it."""
    store = Store(tmp_path_factory.mktemp("store") / "ledger.sqlite3", 1000,
                  checkpoint_interval_ms=0)
    recording = Recording(store._conn)
    store._conn = recording
    try:
        epoch = store.bump_epoch()
        book, n, placed = Book({a: 0 for a in SYSTEM_ACCOUNTS}), 0, []
        for size in SIZES:  # as the writer: look up, load what is missing, decide, commit
            cands = _batch(n, size, placed)
            store.lookup([c.id for c in cands], [c.entry_id for c in cands])
            book.balances.update(store.load_balances([c.user_id for c in cands]))
            book.bets.update(store.load_bets([c.intent.bet_id for c in cands
                                              if c.kind == "settle"]))
            decisions, book = decide_batch(cands, book)
            store.commit(build_batch(decisions, store.heads, epoch, NOW + n))
            n += size
    finally:
        store.close()
    return recording.texts


def test_batches_of_every_size_compile_a_bounded_set_of_statements(
        statement_texts: set[str]) -> None:
    texts = len(statement_texts)
    # At most 10 lengths (512 down to 1) for each of the 10 statements whose length varies
    # (4 inserts, the balance update, 5 reads), plus the fixed ones. Slicing by 900 ids and
    # 450 accounts instead, deposits alone made 411 texts here.
    assert texts <= 10 * 10 + 10, f"{texts} distinct statements for {len(SIZES)} batch sizes"
    assert texts < STATEMENTS_CACHED_MAX


def test_statements_bind_only_anonymous_parameters(statement_texts: set[str]) -> None:
    """``?1`` or ``:name`` cost SQLite a linear search per placeholder whenever it maps a
    parameter's number to its name, and from Python 3.12 on sqlite3 does that for every
    parameter it binds: a 512-row insert with numbered placeholders bound ~80x slower
    there (docs/performance.md)."""
    named = re.compile(r"\?\d|[:@$][A-Za-z_]")
    offending = sorted(text[:120] for text in statement_texts if named.search(text))
    assert not offending, offending


def test_bytes_and_none_bind_as_blob_and_null(tmp_path: Path) -> None:
    """The store binds bytes and None through identity adapters (sqlite3 would otherwise
    look each up in its adapter protocol): what reaches SQLite is still a BLOB with the
    same bytes and a NULL."""
    from workers.adapters.ledger_store import connect

    conn = connect(tmp_path / "x.sqlite3", 1000)
    raw = bytes(range(32))
    got = conn.execute("SELECT typeof(?), ?, typeof(?), ? IS NULL", (raw, raw, None, None))
    assert got.fetchone() == ("blob", raw, "null", 1)
    conn.close()


def test_the_ledger_connection_is_durable(tmp_path: Path) -> None:
    """WAL with synchronous=FULL: an outcome is confirmed only once its batch is durable,
    whatever a faster setting would measure."""
    from workers.adapters.ledger_store import connect

    conn = connect(tmp_path / "x.sqlite3", 1000)
    pragma = {name: conn.execute(f"PRAGMA {name}").fetchone()[0]
              for name in ("journal_mode", "synchronous")}
    assert pragma == {"journal_mode": "wal", "synchronous": 2}
    conn.close()
