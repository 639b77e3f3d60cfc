"""``betstream statement USER_ID``: "where did my money go?", answered from the ledger.

Every ledger entry of the account with its reference and a running balance; the last
running balance must equal the account's snapshot balance (the statement says so).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from producer.errors import ConfigError
from workers.adapters.ledger_listing import (
    LISTED_ACCOUNT_MIN,
    SQLITE_INT_MAX,
    has_user_entries,
    read_mark,
)
from workers.adapters.ledger_store import connect, table_names
from workers.core.archive_rules import SYSTEM_ACCOUNT_MIN, carry_entry_id


@dataclass(frozen=True, slots=True)
class Line:
    entry_id: int
    at_ms: int
    ref_type: str  # deposit | withdrawal | bet | settle
    ref_id: str  # the intent id (for bets and settlements: the bet id)
    txn_id: str
    amount: int
    balance: int  # running balance after this entry


@dataclass(frozen=True, slots=True)
class Statement:
    user_id: int
    opening: int  # balance before the first line shown
    lines: list[Line]
    closing: int  # running balance after the last entry
    snapshot: int | None  # users.balance
    archives: list[str] = field(default_factory=list)  # archive files read, oldest first
    holds: list[dict[str, Any]] = field(default_factory=list)  # withdrawal holds, by id

    @property
    def consistent(self) -> bool:
        return self.snapshot == self.closing

    def as_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "opening": self.opening, "closing": self.closing,
                "snapshot": self.snapshot, "consistent": self.consistent, "archives": self.archives,
                "lines": [asdict(line) for line in self.lines], "holds": self.holds}


def statement(db: Path, user_id: int, since_ms: int = 0, busy_timeout_ms: int = 5000,
              archive_dir: Path | None = None) -> Statement:
    """The account's entries from the archives (when ``archive_dir`` is given) and the live
    file. Without the archives, the carried-forward row stands for all archived entries."""
    from workers.adapters.ledger_archive_audit import archive_files

    conn = connect(db, busy_timeout_ms, readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot for the lines and the balance
        row = conn.execute("SELECT balance FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no account {user_id} in {db}")
        files = archive_files(conn) if archive_dir is not None else []
        through = conn.execute("SELECT COALESCE(MAX(through_batch), 0) FROM archive_anchor"
                               ).fetchone()[0] if files else 0
        sources = [_archived(Path(archive_dir) / f, user_id, through, busy_timeout_ms)
                   for f, _, _ in files] if archive_dir is not None else []
        # With the archives read, the carried-forward row (entry id < 0) would count twice.
        sources.extend(_live(conn, user_id, carried=not files))
        folded = _fold(user_id, since_ms, sources, row[0], [f for f, _, _ in files])
        return replace(folded, holds=_holds(conn, user_id))
    finally:
        conn.close()


def _holds(conn: sqlite3.Connection, user_id: int) -> list[dict[str, Any]]:
    """The account's withdrawal holds and their state (open, posted, voided, expired)."""
    keys = ("id", "amount", "state", "expires_at")
    if "holds" not in table_names(conn):
        return []  # a file from before holds existed (a backup)
    rows = conn.execute("SELECT id, amount, state, expires_at FROM holds WHERE user_id = ? "
                        "ORDER BY seq", (user_id,))
    return [dict(zip(keys, row)) for row in rows]


COLS = "entry_id, created_at, ref_type, ref_id, txn_id, amount"
LISTED_COLS = ", ".join(f"l.{c}" for c in COLS.split(", "))


def _live(conn: sqlite3.Connection, user_id: int, carried: bool) -> list[list[tuple]]:
    """The account's live rows in entry order: its carried-forward row (found by its fixed
    id), the rows user_entries lists, then the ledger's unlisted tail (schema.sql); a
    system account's by a scan of the ledger."""
    if not has_user_entries(conn):
        # A file from before schema 5 (a backup): its index ledger_by_user finds the rows.
        return [conn.execute(f"SELECT {COLS} FROM transaction_ledger WHERE user_id = ? AND "
                             "entry_id >= ? ORDER BY entry_id",
                             (user_id, -SQLITE_INT_MAX if carried else 1)).fetchall()]
    sources = []
    if carried and user_id >= SYSTEM_ACCOUNT_MIN:
        sources.append(conn.execute(f"SELECT {COLS} FROM transaction_ledger WHERE entry_id = ?",
                                    (carry_entry_id(user_id),)).fetchall())
    # Listed rows up to the mark, the ledger past it: a listing round half done may have
    # listed rows above the mark, and they must not show twice
    # (workers/adapters/ledger_listing.py). A
    # system account is not listed: all of its rows are the ledger's.
    listed = read_mark(conn) if user_id >= LISTED_ACCOUNT_MIN else 0
    if listed > 0:
        sources.append(conn.execute(
            f"SELECT {LISTED_COLS} FROM user_entries u JOIN transaction_ledger l "
            "ON l.entry_id = u.entry_id WHERE u.user_id = ? AND u.entry_id > 0 "
            "AND u.entry_id <= ? ORDER BY u.entry_id", (user_id, listed)).fetchall())
    sources.append(conn.execute(
        f"SELECT {COLS} FROM transaction_ledger WHERE entry_id > ? AND user_id = ? "
        "ORDER BY entry_id", (listed, user_id)).fetchall())
    return sources


def _archived(path: Path, user_id: int, through: int, busy_timeout_ms: int) -> list[tuple]:
    if not path.exists():
        raise ConfigError(f"archive file {path} is missing (listed in the ledger's archive_files)")
    conn = connect(path, busy_timeout_ms, readonly=True)
    try:
        return conn.execute(f"SELECT {COLS} FROM transaction_ledger WHERE user_id = ? "
                            "AND batch_no <= ? ORDER BY entry_id", (user_id, through)).fetchall()
    finally:
        conn.close()


def _fold(user_id: int, since_ms: int, sources: list, snapshot: int,
          archives: list[str]) -> Statement:
    running, opening, lines = 0, 0, []
    for rows in sources:
        for entry_id, at, ref_type, ref_id, txn_id, amount in rows:
            running += amount
            if at < since_ms:
                opening = running
                continue
            lines.append(Line(entry_id, at, ref_type, ref_id, txn_id, amount, running))
    return Statement(user_id, opening, lines, running, snapshot, archives)
