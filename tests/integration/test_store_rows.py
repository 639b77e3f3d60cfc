"""The ledger file holds exactly the rows build_batch made (workers/adapters/ledger_store.py, real SQLite).

The commit binds a batch's constants once per statement, slices rows into statements of
power-of-two lengths, and creates an account only when the balance update finds it
missing. Whatever mix of batches comes in, what lands on disk must be
the batch as built: every outcome column, every ledger row, every bet, every balance.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from unittest.mock import patch

from hypothesis import example, given, settings
from hypothesis import strategies as st

from producer.contract import BetIntent, DepositIntent, SettleIntent
from tests.support import candidate, query
from workers.adapters import ledger_store as store_module
from workers.adapters.ledger_audit import audit
from workers.adapters.ledger_listing import (
    LISTED_ACCOUNT_MIN,
    copy_unlisted,
    list_round,
    list_slice,
    move_mark,
    slices,
)
from workers.adapters.ledger_statement import statement
from workers.adapters.ledger_store import Store, connect
from workers.core.batch_rows import BatchWrite, build_batch
from workers.core.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch

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


ROUND = st.none() | st.tuples(st.integers(1, 40), st.integers(1, 10),
                              st.none() | st.integers(0, 3))


@FEW
@given(st.lists(st.tuples(st.lists(OPS, min_size=1, max_size=12), ROUND), min_size=1,
                max_size=5))
def test_statements_find_every_entry_however_the_listing_lags(tmp_path_factory, steps) -> None:
    """The lister lists users' ledger rows in user_entries beside the writer, a slice of
    rows per transaction, then moves the mark; a round may stop between slices (a crash).
    After each batch: no round, a round (lag threshold 1-40 rows, slices of 1-10 rows), or
    one stopped after 0-3 slices. Each account's statement (system accounts' too, which
    are not listed) is exactly its ledger rows, in order, and the audit finds the listing
    right."""
    path = Path(tmp_path_factory.mktemp("ledger")) / "ledger.sqlite3"
    store = Store(path, 1000, checkpoint_interval_ms=0)
    lister = connect(path, 1000)
    rounds = iter([r for _, r in steps])
    try:
        written, _ = _commit_all(store, [ops for ops, _ in steps],
                                 after=lambda: _list_round(lister, next(rounds)))
    finally:
        lister.close()
        store.close()
    rows = [row for w in written for row in w.ledger]
    mark = query(path, "SELECT value FROM meta WHERE key = 'user_entries_through'")[0][0]
    listed = query(path, "SELECT user_id, entry_id FROM user_entries ORDER BY 1, 2")
    assert [e for e in listed if e[1] <= mark] == sorted(
        (r[2], r[0]) for r in rows if r[0] <= mark and r[2] >= LISTED_ACCOUNT_MIN)
    for user in {r[2] for r in rows}:
        lines = statement(path, user).lines
        assert [(ln.entry_id, ln.amount) for ln in lines] == [(r[0], r[3]) for r in rows
                                                             if r[2] == user]
    assert [c for c in audit(path) if not c.ok] == []


def _list_round(conn: sqlite3.Connection, plan: tuple | None) -> None:
    if plan is None:
        return
    lag_rows_min, slice_rows_max, stop_after = plan
    mark, top = copy_unlisted(conn, lag_rows_min)
    if top <= mark:
        return
    for n, (low, high) in enumerate(slices(conn, slice_rows_max)):
        if stop_after is not None and n >= stop_after:
            return  # stopped between slices: the mark stays
        list_slice(conn, low, high)
    move_mark(conn, top)


def test_the_audit_finds_user_entries_that_do_not_list_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    store = Store(path, 1000, checkpoint_interval_ms=0)
    try:
        _commit_all(store, [[("deposit", 1, 100, 0), ("bet", 1, 40, 0)]])
    finally:
        store.close()
    with closing(connect(path, 1000)) as conn:
        assert list_round(conn, 1, 2) == 4
    name = "user_entries list the ledger"
    assert [c.ok for c in audit(path) if c.name == name] == [True]
    listed = query(path, "SELECT user_id, entry_id FROM user_entries")
    assert sorted(listed) == [(1, e) for e, in query(  # users' rows only: not the cash or house
        path, "SELECT entry_id FROM transaction_ledger WHERE user_id = 1 ORDER BY entry_id")]
    first = listed[0][1]
    for tamper in (f"DELETE FROM user_entries WHERE entry_id = {first}",  # a row left unlisted
                   f"UPDATE user_entries SET user_id = 2 WHERE entry_id = {first}",  # another's
                   "INSERT INTO user_entries VALUES (1, 99)",  # no such row
                   "INSERT INTO user_entries VALUES (0, -3)",  # a carried-forward id
                   "UPDATE meta SET value = -3 WHERE key = 'user_entries_through'"):
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}.sqlite3"
        copy.write_bytes(path.read_bytes())
        with closing(sqlite3.connect(copy)) as conn, conn:
            conn.execute(tamper)
        assert [c.ok for c in audit(copy) if c.name == name] == [False], tamper


def test_a_round_skips_rows_archived_after_it_copied_them(tmp_path: Path) -> None:
    """A slice lists only rows above the archive anchor's entry_id_max, read under its write
    lock: rows archived between the copy and the slice are not listed (the audit would find
    a listed row that is not live), the rest are, and statements stay whole."""
    from workers.adapters.ledger_archive import archive

    path = tmp_path / "ledger.sqlite3"
    store = Store(path, 1000, checkpoint_interval_ms=0)
    try:
        _commit_all(store, [[("deposit", u, 10 * u, 0)] for u in USERS for _ in range(3)])
    finally:
        store.close()
    with closing(connect(path, 1000)) as conn:
        mark, top = copy_unlisted(conn, 1)
        done = archive(path, tmp_path / "archive", NOW + 4, busy_timeout_ms=1000, rows_max=2,
                       batches_max=2, pause_ms=0)
        assert done.ledger_rows > 0
        for low, high in slices(conn, 3):
            list_slice(conn, low, high)
        move_mark(conn, top)
    live = query(path, f"SELECT user_id, entry_id FROM transaction_ledger WHERE entry_id > 0 "
                       f"AND user_id >= {LISTED_ACCOUNT_MIN} ORDER BY 1, 2")
    assert query(path, "SELECT user_id, entry_id FROM user_entries ORDER BY 1, 2") == live
    assert [c for c in audit(path) if not c.ok] == []
    for user in USERS:
        assert statement(path, user).consistent


def _commit_all(store: Store, batches: list[list[tuple]],
                after: Callable[[], None] = lambda: None) -> tuple[list[BatchWrite], Book]:
    """Decide and commit each batch as the writer does, calling ``after`` after each; the
    book ends as the cache would."""
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
        decisions, book = decide_batch(cands, book)
        write = build_batch(decisions, store.heads, epoch, NOW + n)
        store.commit(write)
        written.append(write)
        after()
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
