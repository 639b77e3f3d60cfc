"""Archival's pure rules: the cutoff never reaches into what could still be re-sent or
redelivered, carried-forward rows keep every account whole, and ids never collide."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.errors import InvariantViolation
from workers.adapters.ledger_statement import statement
from workers.adapters.ledger_store import SCHEMA_VERSION, Store, schema_sql
from workers.core.archive_rules import carried, carry_entry_id, effective_cutoff, period_of

ms = st.integers(0, 2**45)


@given(ms, ms, st.integers(100, 10**7), st.integers(0, 10**5), st.none() | ms, st.none() | ms)
def test_cutoff_is_the_tightest_bound_and_says_which(before: int, now: int, age: int, skew: int,
                                                     unacked: int | None,
                                                     unpublished: int | None) -> None:
    cut = effective_cutoff(before, now, age, skew, unacked, unpublished)
    assert cut.ms <= before and cut.ms <= now - age - skew
    assert unacked is None or cut.ms <= unacked - age - skew
    assert unpublished is None or cut.ms <= unpublished, "nothing unpublished is archived"
    assert cut.ms == {"requested": before, "freshness": now - age - skew,
                      "backlog": (unacked or 0) - age - skew,
                      "confirmations not yet published": unpublished}[cut.why]


@given(ms, st.integers(100, 10**7), st.integers(0, 10**5), st.none() | ms, ms)
def test_no_copy_still_to_be_processed_finds_its_outcome_archived(
        now: int, age: int, skew: int, unacked: int | None, committed: int) -> None:
    """Whatever is archived (committed before the cutoff) is stale for every ingress the
    writer may still process: at or after the unacknowledged floor, or from now on."""
    cut = effective_cutoff(2**46, now, age, skew, unacked)
    if committed < cut.ms:
        latest_issued = committed + skew  # the writer accepted it, so issued_at <= T + skew
        for ingress in [now] + ([unacked] if unacked is not None else []):
            assert ingress - latest_issued > age, "a re-sent copy would be stale"


accounts = st.integers(-2, 10_000)


@given(st.dictionaries(accounts, st.integers(-10**9, 10**9)),
       st.lists(st.tuples(accounts, st.integers(-10**6, 10**6).filter(bool))))
def test_carried_amounts_add_what_leaves_the_live_file(old: dict[int, int],
                                                       rows: list[tuple[int, int]]) -> None:
    new = carried(old, rows)
    assert set(new) == {a for a, _ in rows}
    for account, amount in new.items():
        assert amount == old.get(account, 0) + sum(x for a, x in rows if a == account)


@given(accounts, accounts)
def test_carried_forward_ids_are_negative_and_one_per_account(a: int, b: int) -> None:
    assert carry_entry_id(a) < 0
    assert (carry_entry_id(a) == carry_entry_id(b)) == (a == b)


def test_an_unknown_system_account_has_no_carried_forward_id() -> None:
    with pytest.raises(InvariantViolation):
        carry_entry_id(-3)


def test_archive_files_are_per_utc_month() -> None:
    assert period_of(1_761_955_199_999) == "2025-10"  # 2025-10-31 23:59:59.999 UTC
    assert period_of(1_761_955_200_000) == "2025-11"


def test_a_schema_2_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    """A file from before archival keeps its rows and gets the new tables and trigger."""
    path = tmp_path / "old.sqlite3"
    schema = schema_sql()
    old = (schema.replace(f"('schema_version', {SCHEMA_VERSION})", "('schema_version', 2)")
           .replace("WHEN OLD.batch_no > COALESCE((SELECT through_batch FROM archive_anchor), 0)\n",
                    ""))
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute("INSERT INTO transaction_ledger VALUES (1, 't', 1, 5, 10, 'deposit', 't', 0)")
    conn.commit()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM transaction_ledger")
    conn.close()
    Store(path, 1000, checkpoint_interval_ms=0).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                        ).fetchone() == (SCHEMA_VERSION,)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM transaction_ledger")  # nothing is archived: still refused
    assert conn.execute("SELECT COUNT(*) FROM transaction_ledger").fetchone() == (1,)
    conn.close()


def test_a_schema_3_ledger_loses_the_unread_market_index_and_keeps_its_rows(
        tmp_path: Path) -> None:
    """Version 4 drops bets_by_market (nothing reads it; it cost ~15 % of a commit)."""
    path = tmp_path / "v3.sqlite3"
    schema = schema_sql()
    conn = sqlite3.connect(path)
    conn.executescript(schema.replace(f"('schema_version', {SCHEMA_VERSION})",
                                      "('schema_version', 3)"))
    conn.execute("CREATE INDEX bets_by_market ON bets(market, status)")
    conn.execute("INSERT INTO bets VALUES (1, 'b', 7, 'm', 's', '2.00', 10, 'open', NULL)")
    conn = _upgraded(conn, path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                        ).fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'bets_by_market'"
                        ).fetchall() == []
    assert conn.execute("SELECT COUNT(*) FROM bets").fetchone() == (1,)
    conn.close()


def _upgraded(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """Close the old file, let the writer's Store open (and upgrade) it, open it again."""
    conn.commit()
    conn.close()
    Store(path, 1000, checkpoint_interval_ms=0).close()
    return sqlite3.connect(path)


def _schema_4_file(path: Path) -> sqlite3.Connection:
    """A ledger as version 4 made it: ledger_by_user, and no user_entries or mark."""
    schema = schema_sql()
    conn = sqlite3.connect(path)
    conn.executescript(schema.replace(f"('schema_version', {SCHEMA_VERSION})",
                                      "('schema_version', 4)"))
    conn.executescript("DROP TABLE user_entries; DELETE FROM meta WHERE key = "
                       "'user_entries_through'; CREATE INDEX ledger_by_user ON "
                       "transaction_ledger(user_id, entry_id);")
    return conn


def test_a_schema_4_ledger_lists_its_rows_in_user_entries_and_drops_the_index(
        tmp_path: Path) -> None:
    """Version 5 replaces the per-posting index ledger_by_user with user_entries, listed in
    bulk: an upgraded file lists every user's row it had, so statements still find them
    all (the cash account's rows, 0, are found by a scan, as system accounts' are)."""
    path = tmp_path / "v4.sqlite3"
    conn = _schema_4_file(path)
    rows = [(1, "t1", 1, 5, 10, "deposit", "t1", 0), (2, "t1", 1, 0, -10, "deposit", "t1", 0),
            (3, "t2", 2, 9, 4, "deposit", "t2", 0), (4, "t2", 2, 0, -4, "deposit", "t2", 0)]
    conn.executemany("INSERT INTO transaction_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn = _upgraded(conn, path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT user_id, entry_id FROM user_entries ORDER BY entry_id"
                        ).fetchall() == [(5, 1), (9, 3)]
    assert conn.execute("SELECT value FROM meta WHERE key = 'user_entries_through'"
                        ).fetchone() == (4,)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'ledger_by_user'"
                        ).fetchall() == []
    conn.close()


def test_a_fully_archived_schema_4_ledger_gets_mark_0_and_its_statements_stay_single(
        tmp_path: Path) -> None:
    """A file whose live rows are all carried-forward ones (entry ids < 0) is upgraded to
    mark 0, not to its highest negative id: a carried-forward row archival adds later must
    show once in a statement (found by its fixed id), never again as unlisted tail."""
    path = tmp_path / "v4-archived.sqlite3"
    conn = _schema_4_file(path)
    conn.execute("INSERT INTO archive_anchor VALUES (1, 3, 'h', 9, 8, 0, 0)")
    conn.executemany("INSERT INTO transaction_ledger VALUES (?, 'carry', 3, ?, ?, 'carry', "
                     "'archived-through-batch-3', 0)",
                     [(carry_entry_id(0), 0, -7), (carry_entry_id(5), 5, 7)])
    conn.execute("INSERT INTO users VALUES (5, 7, 0)")
    conn.execute("UPDATE users SET balance = -7 WHERE id = 0")
    conn = _upgraded(conn, path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'user_entries_through'"
                        ).fetchone() == (0,)
    # a later archival gives the house (-1) a carried-forward row above the cash one
    with conn:
        conn.execute("INSERT INTO transaction_ledger VALUES (?, 'carry', 4, -1, 2, 'carry', "
                     "'archived-through-batch-4', 0)", (carry_entry_id(-1),))
        conn.execute("UPDATE users SET balance = 2 WHERE id = -1")
    conn.close()
    house = statement(path, -1)
    assert [(ln.entry_id, ln.amount) for ln in house.lines] == [(carry_entry_id(-1), 2)]
    assert house.consistent


@pytest.mark.parametrize("version,undo,gained", [
    # 6: market states (contract v1.1); every market of an older file is open
    (5, ["DROP TABLE markets", "DROP TABLE holds", "DELETE FROM users WHERE id = -3"],
     ["SELECT COUNT(*) FROM markets"]),
    # 7: withdrawal holds and the pending account -3
    (6, ["DROP TABLE holds", "DELETE FROM users WHERE id = -3"],
     ["SELECT COUNT(*) FROM holds", "SELECT balance FROM users WHERE id = -3"]),
])
def test_an_older_ledger_gains_the_tables_of_contract_1_1(
        tmp_path: Path, version: int, undo: list[str], gained: list[str]) -> None:
    path = tmp_path / f"v{version}.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(schema_sql().replace(f"('schema_version', {SCHEMA_VERSION})",
                                            f"('schema_version', {version})"))
    for sql in undo:
        conn.execute(sql)
    conn.commit()
    conn = _upgraded(conn, path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                        ).fetchone() == (SCHEMA_VERSION,)
    assert [conn.execute(sql).fetchone() for sql in gained] == [(0,)] * len(gained)
    conn.close()
