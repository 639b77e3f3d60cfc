"""The ledger file holds exactly the rows build_batch made (workers/store.py, real SQLite).

The commit binds a batch's constants once per statement, slices rows into statements of
power-of-two lengths, and creates an account only when the balance update finds it
missing. Whatever mix of batches comes in, what lands on disk must be
the batch as built: every outcome column, every ledger row, every bet, every balance.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from unittest.mock import patch

from hypothesis import example, given, settings
from hypothesis import strategies as st

from producer.contract import BetIntent, DepositIntent, SettleIntent
from workers.batch import BatchWrite, build_batch
from workers.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers import store as store_module
from workers.store import Store
from tests.support import candidate, query

FEW = settings(max_examples=25, deadline=None, database=None)
NOW = 1_700_000_000_000
USERS = (1, 2, 3, 4)

OUTCOME_COLS = ("seq, id, entry_id, kind, user_id, status, reason, detail, balance, body_sha, "
                "batch_no, committed_at")


def _intent(op: tuple, n: int, placed: list[str]) -> Candidate:
    kind, user, amount, extra = op
    common = {"id": str(uuid.UUID(int=n, version=4)), "user_id": user, "nonce": "n" * 16,
              "issued_at": 1}
    at = NOW + n
    if kind == "deposit":
        return candidate(DepositIntent(kind="deposit", amount=amount, **common), at)
    if kind == "bet":
        placed.append(common["id"])
        return candidate(BetIntent(kind="bet", amount=amount, market="m", selection="home",
                                   odds="2.50", **common), at)
    if kind == "settle" and placed:
        bet_id = placed[extra % len(placed)]
        return candidate(SettleIntent(kind="settle", bet_id=bet_id,
                                      outcome=("won", "lost", "void")[extra % 3], **common), at)
    return candidate(DepositIntent(kind="deposit", amount=amount, **common), at).rejected_early(
        "stale", "too old" if extra % 2 else None)


OPS = st.tuples(st.sampled_from(["deposit", "bet", "settle", "stale"]), st.sampled_from(USERS),
                st.integers(1, 400), st.integers(0, 5))


@FEW
@given(st.lists(st.lists(OPS, min_size=1, max_size=12), min_size=1, max_size=4), st.booleans())
@example([[("deposit", 1, 100, 0), ("bet", 1, 100, 0)]], False)  # a new account nets to 0
def test_the_file_holds_exactly_the_batches_as_built(tmp_path_factory, batches, small) -> None:
    """``small``: statements limited to 40 parameters and 2 accounts, so a batch's rows and
    accounts span several statements (new accounts in a later one too)."""
    path = Path(tmp_path_factory.mktemp("ledger")) / "ledger.sqlite3"
    store = Store(path, 1000, checkpoint_interval_ms=0)
    if small:
        store._vars_max = 40
    try:
        with patch.object(store_module, "SQL_VARIABLES_MAX", 6 if small else 900):
            written, book = _commit_all(store, batches)
    finally:
        store.close()
    _assert_on_disk(path, written, book)


def _commit_all(store: Store, batches: list[list[tuple]]) -> tuple[list[BatchWrite], Book]:
    """Decide and commit each batch as the writer does; the book ends as the cache would."""
    epoch = store.bump_epoch()
    book, placed, n, written = Book({a: 0 for a in SYSTEM_ACCOUNTS}), [], 0, []
    for ops in batches:
        cands = []
        for op in ops:
            n += 1
            cands.append(_intent(op, n, placed))
        if store.heads.batch_no:  # a later batch sees the bets on disk, as the writer does
            book.bets.update(store.load_bets([c.intent.bet_id for c in cands
                                              if c.intent and c.kind == "settle"]))
        write = build_batch(decide_batch(cands, book), store.heads, epoch, NOW + n)
        store.commit(write)
        written.append(write)
    return written, book


def _assert_on_disk(path: Path, written: list[BatchWrite], book: Book) -> None:
    outcomes = [(o.seq, o.id, o.entry_id, o.kind, o.user_id, o.status, o.reason, o.detail,
                 o.balance, o.body_sha, o.batch_no, o.committed_at)
                for w in written for o in w.outcomes]
    assert query(path, f"SELECT {OUTCOME_COLS} FROM outcomes ORDER BY seq") == outcomes
    ledger = [(*row, w.batch_no) for w in written for row in w.ledger]
    assert query(path, "SELECT entry_id, txn_id, user_id, amount, ref_type, ref_id, created_at, "
                       "batch_no FROM transaction_ledger ORDER BY entry_id") == ledger
    bets = query(path, "SELECT seq, id, user_id, market, selection, odds, stake FROM bets "
                       "ORDER BY seq")
    assert bets == [row for w in written for row in w.new_bets]
    states = dict(query(path, "SELECT id, status FROM bets"))
    assert states == {bet.id: bet.status for bet in book.bets.values()}
    on_disk = dict(query(path, "SELECT id, balance FROM users"))
    assert on_disk == {**{a: 0 for a in SYSTEM_ACCOUNTS}, **book.balances}
    opened: dict[int, int] = {}  # an account is created by the first batch posting to it
    for w in written:
        for account, _, at in w.balance_deltas:
            opened.setdefault(account, at)
    created = dict(query(path, "SELECT id, created_at FROM users WHERE id > 0"))
    assert created == {a: at for a, at in opened.items() if a > 0}
