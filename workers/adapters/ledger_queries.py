"""Reads of the ledger for everyone but the writer's own store: the gateway, operator
commands and the demo. Each takes an open (read-only) connection; the caller owns it.

The writer's reads (repeats, balances, bets) are in workers/adapters/ledger_store.py, the
audit's in ledger_audit.py, statements' in ledger_statement.py and ledger_listing.py.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any, Final

from workers.core.decision import payout


def first_outcome(table: str = "") -> str:
    """An intent id's first outcome (later entries with the id but another body are
    ``id_conflict`` rows). Written exactly as the partial index ``outcomes_by_id``'s WHERE
    (workers/adapters/schema.sql), so that SQLite's planner uses that index."""
    prefix = f"{table}." if table else ""
    return f"({prefix}reason IS NULL OR {prefix}reason != 'id_conflict')"


_BET: Final = (
    "SELECT o.id, o.user_id, o.status, o.reason, o.balance, o.seq, o.committed_at, "
    "b.stake, b.odds, b.market, b.selection, b.status AS bet_status FROM outcomes o "
    f"LEFT JOIN bets b ON b.seq = o.seq WHERE o.id = ? AND o.kind = 'bet' "
    f"AND {first_outcome('o')}")


def bet_outcome(conn: sqlite3.Connection, bet_id: str) -> dict[str, Any] | None:
    """A bet's first outcome, with the bet as it stands (None: not committed)."""
    cursor = conn.execute(_BET, (bet_id,))
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([col[0] for col in cursor.description], row))


def user_balance(conn: sqlite3.Connection, user_id: int) -> int | None:
    row = conn.execute("SELECT balance FROM users WHERE id = ?", (user_id,)).fetchone()
    return row[0] if row else None


def outcome_seq_max(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outcomes").fetchone()[0]


def outcome_counts_after(conn: sqlite3.Connection, seq: int) -> list[tuple[str, str | None, int]]:
    """(status, reason, count) of the outcomes after ``seq``, most frequent first."""
    return conn.execute("SELECT status, reason, COUNT(*) FROM outcomes WHERE seq > ? "
                        "GROUP BY 1, 2 ORDER BY 3 DESC", (seq,)).fetchall()


def batches_committed_before(conn: sqlite3.Connection, at_ms: int) -> int:
    return conn.execute("SELECT COUNT(*) FROM batches WHERE committed_at < ?",
                        (at_ms,)).fetchone()[0]


def first_outcomes_per_id(conn: sqlite3.Connection, seq_max: int | None = None) -> Counter:
    """How many first outcomes each intent id has (more than one would be a double),
    all or only up to ``seq_max``."""
    sql = f"SELECT id, COUNT(*) FROM outcomes WHERE {first_outcome()}"
    args: tuple = ()
    if seq_max is not None:
        sql, args = sql + " AND seq <= ?", (seq_max,)
    return Counter(dict(conn.execute(sql + " GROUP BY id", args).fetchall()))


def posting_batches_per_txn(conn: sqlite3.Connection, after_batch: int = 0,
                            through_batch: int | None = None) -> Counter:
    """In how many batches each transaction posted: live rows after ``after_batch`` (not
    the rows archival carried forward), or an archive's rows through ``through_batch``."""
    if through_batch is not None:
        sql, args = "batch_no <= ?", (through_batch,)
    else:
        sql, args = "entry_id > 0 AND batch_no > ?", (after_batch,)
    return Counter(dict(conn.execute(
        "SELECT txn_id, COUNT(DISTINCT batch_no) FROM transaction_ledger "
        f"WHERE {sql} GROUP BY txn_id", args).fetchall()))


def outcome_ids_through(conn: sqlite3.Connection, seq_max: int) -> set[str]:
    return {i for (i,) in conn.execute("SELECT id FROM outcomes WHERE seq <= ?", (seq_max,))}


# A settle's outcome also names its bet, the result and the payout (the bet settled by it).
_OUTCOMES_AFTER: Final = (
    "SELECT o.id, o.kind, o.user_id, o.status, o.reason, o.balance, o.seq, o.committed_at, 0, "
    "o.detail, o.entry_id, b.id, b.status, b.stake, b.odds FROM outcomes o "
    "LEFT JOIN bets b ON o.kind = 'settle' AND b.settled_seq = o.seq "
    "WHERE o.seq > ? ORDER BY o.seq LIMIT ?")


def outcomes_after(conn: sqlite3.Connection, seq: int, limit: int
                   ) -> tuple[list[tuple], list[str]]:
    """Up to ``limit`` outcomes after ``seq``, in seq order: confirmation rows (values in
    MESSAGE_FIELDS order, ``duplicate`` false; a settle's then has its bet's ``bet_id``,
    ``result`` and ``payout`` as a last element) and their stream entry ids."""
    rows, entry_ids = [], []
    for *row, entry_id, bet_id, result, stake, odds in conn.execute(_OUTCOMES_AFTER,
                                                                   (seq, limit)):
        row[8] = False
        if bet_id is not None:  # a settlement: what it paid the player
            row.append({"bet_id": bet_id, "result": result,
                        "payout": {"won": payout(stake, odds), "void": stake}.get(result, 0)})
        rows.append(tuple(row))
        entry_ids.append(entry_id)
    return rows, entry_ids


def first_committed_after(conn: sqlite3.Connection, seq: int) -> int | None:
    """When the first outcome after ``seq`` was committed (ms); None if there is none."""
    row = conn.execute("SELECT committed_at FROM outcomes WHERE seq > ? ORDER BY seq LIMIT 1",
                       (seq,)).fetchone()
    return row[0] if row else None


def _market_row(conn: sqlite3.Connection, market: str) -> tuple[str, int] | None:
    return conn.execute("SELECT state, updated_seq FROM markets WHERE market = ?",
                        (market,)).fetchone()


def market_state(conn: sqlite3.Connection, market: str) -> str:
    """open, suspended, settling or closed (one key lookup: the demo page asks often)."""
    row = _market_row(conn, market)
    return row[0] if row else "open"


def market_status(conn: sqlite3.Connection, market: str) -> dict[str, Any]:
    """A market's state (``open`` when the ledger never named it), the outcome that set
    it, and its open bets (count, stakes). A scan of bets: an operator's question, not the
    writer's (there is no index by market, on purpose: docs/ledger.md)."""
    row = _market_row(conn, market)
    bets, stakes = conn.execute("SELECT COUNT(*), COALESCE(SUM(stake), 0) FROM bets "
                                "WHERE market = ? AND status = 'open'", (market,)).fetchone()
    return {"market": market, "state": row[0] if row else "open",
            "since_seq": row[1] if row else None, "open_bets": bets, "open_stakes": stakes}


def outcome_of(conn: sqlite3.Connection, intent_id: str) -> dict[str, Any] | None:
    """The first outcome of an intent id, as a confirmation shows it; None until committed."""
    row = conn.execute(f"SELECT id, kind, user_id, status, reason, balance, seq, committed_at, "
                       f"detail FROM outcomes WHERE {first_outcome()} AND id = ?",
                       (intent_id,)).fetchone()
    keys = ("id", "kind", "user_id", "status", "reason", "balance", "seq", "committed_at",
            "detail")
    return dict(zip(keys, row)) if row else None
