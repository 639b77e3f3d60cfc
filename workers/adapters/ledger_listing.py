"""Listing ledger rows in user_entries beside the writer, a slice of rows at a time.

Statements find a user's entries in user_entries (workers/adapters/schema.sql), which lists every
live ledger row of a user account (id >= LISTED_ACCOUNT_MIN) up to the mark
``user_entries_through``. An index kept per batch took each posting on a random page;
listing many batches' rows at once, sorted, writes each page of user_entries once per
round instead. A round runs on its own connection and thread, so the writer's commits
stay as they are: the unlisted tail is copied into a temporary table (a read, no write
lock), then listed in short transactions of a slice of rows each, in (account, entry)
order (so a commit waits at most one slice), then the mark moves.

System accounts (ids <= 0) are not listed: one of them takes about every other posting
(the other side of each bet and deposit), so a statement of one reads about half the
ledger whichever way it is found, and a scan of the ledger costs no more. Listing them
was half of the lister's work.

Why it is safe to stop anywhere: slices insert ``OR IGNORE`` and only rows still live
(archival removes whole batches, exactly the rows up to the anchor's ``entry_id_max``);
statements read listed rows only up to the mark and the ledger's tail past it, so rows a
half-done round listed above the mark are never shown twice; the next round lists from
the mark again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Final

# The lister's page cache, in the writer's process: a round rewrites at most one page of
# user_entries per account it lists, and a page not cached is read again from the OS
# cache; the writer's own connection keeps its large cache for the hot B-tree pages.
LISTING_CACHE_MB: Final = 32
SQLITE_INT_MAX: Final = 2**63 - 1
LISTED_ACCOUNT_MIN: Final = 1  # users; system accounts (<= 0) are found by a scan
Key = tuple[int, int]  # (user_id, entry_id): user_entries' order
KEY_BEFORE_ALL: Final[Key] = (-SQLITE_INT_MAX, -SQLITE_INT_MAX)
KEY_AFTER_ALL: Final[Key] = (SQLITE_INT_MAX, SQLITE_INT_MAX)
MARK_SQL: Final = "SELECT value FROM meta WHERE key = 'user_entries_through'"

_UNLISTED = ("CREATE TEMP TABLE IF NOT EXISTS unlisted (user_id INTEGER NOT NULL, "
             "entry_id INTEGER NOT NULL, PRIMARY KEY (user_id, entry_id)) WITHOUT ROWID")


def read_mark(conn: sqlite3.Connection) -> int:
    """The mark: every live row up to it is listed (0 before any round; never below 0)."""
    return max(conn.execute(f"SELECT COALESCE(({MARK_SQL}), 0)").fetchone()[0], 0)


def has_user_entries(conn: sqlite3.Connection) -> bool:
    """False for a file from before schema 5 (a backup), which has ledger_by_user instead."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'user_entries'"
                        ).fetchone() is not None


def list_round(conn: sqlite3.Connection, lag_rows_min: int, slice_rows_max: int) -> int:
    """List every live row past the mark if at least ``lag_rows_min`` wait; returns the
    mark afterwards. ``conn`` is the lister's own connection (autocommit mode)."""
    mark, top = copy_unlisted(conn, lag_rows_min)
    if top <= mark:
        return mark
    for low, high in slices(conn, slice_rows_max):
        list_slice(conn, low, high)
    move_mark(conn, top)
    return top


def copy_unlisted(conn: sqlite3.Connection, lag_rows_min: int) -> tuple[int, int]:
    """(mark, top): the rows in (mark, top] copied into the temporary table, or nothing
    (top = mark) when fewer than ``lag_rows_min`` wait. One read snapshot of the ledger."""
    conn.execute(_UNLISTED)
    conn.execute("BEGIN")
    try:
        mark = read_mark(conn)
        top = conn.execute("SELECT COALESCE(MAX(entry_id), 0) FROM transaction_ledger"
                           ).fetchone()[0]
        if top - mark < max(lag_rows_min, 1):
            top = mark
        else:
            conn.execute("DELETE FROM temp.unlisted")
            conn.execute("INSERT INTO temp.unlisted SELECT user_id, entry_id FROM "
                         "transaction_ledger WHERE entry_id > ? AND entry_id <= ? "
                         "AND user_id >= ?", (mark, top, LISTED_ACCOUNT_MIN))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return mark, top


def slices(conn: sqlite3.Connection, rows_max: int) -> Iterator[tuple[Key, Key]]:
    """Key ranges (after low, through high] of about ``rows_max`` copied rows each, in
    order; each bound is found by stepping ``rows_max`` rows along the temporary table's
    key from the last one (a window over all of it cost as much as listing the rows)."""
    low = KEY_BEFORE_ALL
    while True:
        high = conn.execute("SELECT user_id, entry_id FROM temp.unlisted "
                            "WHERE (user_id, entry_id) > (?, ?) ORDER BY user_id, entry_id "
                            "LIMIT 1 OFFSET ?", (*low, max(rows_max, 1) - 1)).fetchone()
        if high is None:
            yield low, KEY_AFTER_ALL
            return
        yield low, (high[0], high[1])
        low = (high[0], high[1])


def list_slice(conn: sqlite3.Connection, low: Key, high: Key) -> None:
    """One short write transaction: the copied rows with keys in (low, high] still live.
    Archival deletes exactly the rows up to the anchor's entry_id_max, in a transaction of
    its own, so that bound, read under this write lock, says which are (no lookup of each
    row in the ledger, which cost a third of a slice)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR IGNORE INTO user_entries(user_id, entry_id) "
                     "SELECT user_id, entry_id FROM temp.unlisted "
                     "WHERE (user_id, entry_id) > (?, ?) AND (user_id, entry_id) <= (?, ?) "
                     "AND entry_id > (SELECT COALESCE(MAX(entry_id_max), 0) "
                     "FROM archive_anchor) ORDER BY user_id, entry_id", (*low, *high))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def move_mark(conn: sqlite3.Connection, top: int) -> None:
    """Every live row up to ``top`` is listed: statements may now read the listing there."""
    conn.execute("UPDATE meta SET value = ? WHERE key = 'user_entries_through' "
                 "AND value < ?", (top, top))
