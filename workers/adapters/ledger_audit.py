"""``betstream audit``: prove the ledger invariants (docs/ledger.md) on an SQLite file.

Each check is one SQL query (the same ones anyone can run with the sqlite3 CLI, see
docs/ledger.md) plus a recomputation of the batch hash chain. Read-only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from producer.contract import MARKET_KINDS
from producer.errors import ConfigError
from workers.adapters.ledger_listing import LISTED_ACCOUNT_MIN, MARK_SQL, has_user_entries
from workers.adapters.ledger_store import connect, table_names
from workers.core.hash_chain import GENESIS_HASH, batch_hash

EXAMPLES_MAX: Final = 5  # offending ids shown per failed check
# Outcomes and bets up to this seq may have their ledger rows in archive files.
ANCHOR_SEQ: Final = "(SELECT COALESCE(MAX(seq_max), 0) FROM archive_anchor)"
_MARKET_KINDS_SQL: Final = ", ".join(f"'{kind}'" for kind in MARKET_KINDS)  # they move no money
LISTED_THROUGH: Final = f"COALESCE(({MARK_SQL}), 0)"  # unclamped: a negative mark fails


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def _none(name: str, sql: str, what: str, needs: str | None = None
          ) -> Callable[[sqlite3.Connection], Check]:
    """A check that passes when ``sql`` returns no rows; one that ``needs`` a table an older
    schema version lacks (a backup made before it) passes with nothing to check."""
    def run(conn: sqlite3.Connection) -> Check:
        if needs is not None and needs not in table_names(conn):
            return Check(name, True, f"nothing to check (no {needs} table in this file)")
        bad = _rows(conn, sql)
        if not bad:
            return Check(name, True, "ok")
        shown = ", ".join(str(r[0]) for r in bad[:EXAMPLES_MAX])
        return Check(name, False, f"{len(bad)} {what}, e.g. {shown}")
    return run


def _global_sum(conn: sqlite3.Connection) -> Check:
    total = _rows(conn, "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM transaction_ledger")[0]
    return Check("ledger sums to zero", total[0] == 0, f"sum {total[0]} over {total[1]} rows")


def _user_entries(conn: sqlite3.Connection) -> Check:
    """A file from before schema 5 (a backup) has no user_entries, and nothing to check."""
    if has_user_entries(conn):
        return _LISTING(conn)
    return Check(_LISTING_NAME, True, "no user_entries: a ledger from before schema 5")


_LISTING_NAME: Final = "user_entries list the ledger"
_LISTING: Final = _none(
    _LISTING_NAME,
    "SELECT u.entry_id FROM user_entries u LEFT JOIN transaction_ledger l "
    "ON l.entry_id = u.entry_id WHERE l.user_id IS NOT u.user_id OR u.entry_id <= 0 "
    "UNION SELECT l.entry_id FROM transaction_ledger l WHERE l.entry_id > 0 "
    f"AND l.user_id >= {LISTED_ACCOUNT_MIN} "
    f"AND l.entry_id <= {LISTED_THROUGH} AND NOT EXISTS (SELECT 1 FROM user_entries u "
    "WHERE u.user_id = l.user_id AND u.entry_id = l.entry_id) "
    f"UNION SELECT {LISTED_THROUGH} WHERE {LISTED_THROUGH} < 0",
    "ledger rows listed wrongly or not at all")


def _triggers(conn: sqlite3.Connection) -> Check:
    names = {r[0] for r in _rows(conn, "SELECT name FROM sqlite_master WHERE type='trigger'")}
    missing = {"ledger_no_update", "ledger_no_delete"} - names
    return Check("ledger is append-only", not missing,
                 "triggers present" if not missing else f"missing triggers {sorted(missing)}")


def _hash_chain(conn: sqlite3.Connection) -> Check:
    """Recompute every batch hash; after archival the chain continues from the anchor."""
    through, prev = conn.execute(
        "SELECT through_batch, head_hash FROM archive_anchor").fetchone() or (0, GENESIS_HASH)
    batches = conn.execute("SELECT batch_no, rows, prev_hash, hash FROM batches "
                           "WHERE batch_no > ? ORDER BY batch_no", (through,))
    rows = conn.execute(
        "SELECT batch_no, entry_id, txn_id, user_id, amount, ref_type, ref_id, created_at "
        "FROM transaction_ledger WHERE entry_id > 0 ORDER BY entry_id")
    grouped = _group_by_batch(rows)
    count, pending = 0, next(grouped, None)
    for batch_no, n_rows, prev_hash, digest in batches:
        mine: list = []
        if pending is not None and pending[0] == batch_no:
            mine, pending = pending[1], next(grouped, None)
        if prev_hash != prev or n_rows != len(mine) or batch_hash(prev, mine) != digest:
            return Check("hash chain intact", False, f"broken at batch {batch_no}")
        prev, count = digest, count + 1
    if pending is not None:
        return Check("hash chain intact", False, f"ledger rows outside batch {pending[0]}")
    start = f" from archived batch {through}" if through else ""
    return Check("hash chain intact", True, f"{count} batches{start}")


def _group_by_batch(rows: sqlite3.Cursor) -> Iterator[tuple[int, list]]:
    current, group = None, []
    for batch_no, *row in rows:
        if batch_no != current and group:
            yield current, group
            group = []
        current = batch_no
        group.append(tuple(row))
    if group:
        yield current, group


CHECKS: Final = (
    _global_sum,
    _none("every transaction sums to zero",
          "SELECT txn_id FROM transaction_ledger GROUP BY txn_id HAVING SUM(amount) != 0",
          "unbalanced transactions"),
    _none("balances equal ledger sums",
          "SELECT u.id FROM users u LEFT JOIN (SELECT user_id, SUM(amount) AS s "
          "FROM transaction_ledger GROUP BY user_id) l ON l.user_id = u.id "
          "WHERE u.balance != COALESCE(l.s, 0) UNION "
          "SELECT DISTINCT user_id FROM transaction_ledger "
          "WHERE user_id NOT IN (SELECT id FROM users)",
          "accounts differ"),
    _none("no player below zero", "SELECT id FROM users WHERE id > 0 AND balance < 0",
          "negative players"),
    _hash_chain,
    _none("bet ids are unique", "SELECT id FROM bets GROUP BY id HAVING COUNT(*) > 1",
          "repeated bet ids"),
    # The ledger has no index on ref_id or txn_id: join against a materialized,
    # automatically indexed set (or an IN list), never a correlated scan per row.
    # Stakes of bets placed before the archive anchor are in the archive files.
    _none("one stake entry per accepted bet",
          "WITH stakes AS MATERIALIZED (SELECT ref_id, user_id, amount, COUNT(*) AS n "
          "FROM transaction_ledger WHERE ref_type = 'bet' GROUP BY ref_id, user_id, amount) "
          "SELECT b.id FROM bets b LEFT JOIN stakes s ON s.ref_id = b.id "
          "AND s.user_id = b.user_id AND s.amount = -b.stake "
          f"WHERE b.seq > {ANCHOR_SEQ} "
          "GROUP BY b.id HAVING COALESCE(SUM(s.n), 0) != 1 UNION "
          "SELECT ref_id FROM transaction_ledger WHERE ref_type = 'bet' "
          "AND ref_id NOT IN (SELECT id FROM bets)",
          "bets without exactly one stake"),
    _none("at most one settlement per bet",
          "SELECT ref_id FROM transaction_ledger WHERE ref_type = 'settle' GROUP BY ref_id "
          "HAVING COUNT(DISTINCT txn_id) > 1 UNION "
          "SELECT id FROM bets WHERE status != 'open' AND id NOT IN "
          "(SELECT ref_id FROM transaction_ledger WHERE ref_type = 'settle')",
          "bets settled other than once"),
    # NOT IN builds one temporary index of txn_id; a correlated NOT EXISTS would scan the
    # ledger once per outcome (txn_id has no index: it would cost the writer a page write).
    _none("every accepted outcome is in the ledger",  # but a market's: it moves no money
          "SELECT o.id FROM outcomes o WHERE o.status = 'accepted' "
          f"AND o.seq > {ANCHOR_SEQ} AND o.kind NOT IN ({_MARKET_KINDS_SQL}) "
          "AND o.id NOT IN (SELECT txn_id FROM transaction_ledger)",
          "accepted outcomes without ledger rows"),
    _none("a resulted market has no open bet",
          "SELECT market FROM markets WHERE state = 'closed' "
          "AND market IN (SELECT market FROM bets WHERE status = 'open')",
          "closed markets with open bets", needs="markets"),
    _none("escrow holds exactly the open stakes",
          "SELECT id FROM users WHERE id = -2 AND balance != "
          "(SELECT COALESCE(SUM(stake), 0) FROM bets WHERE status = 'open')",
          "escrow balances differ from the open stakes"),
    _none("the pending account holds exactly the open holds",
          "SELECT id FROM users WHERE id = -3 AND balance != "
          "(SELECT COALESCE(SUM(amount), 0) FROM holds WHERE state = 'open')",
          "pending balances differ from the open holds", needs="holds"),
    _none("carried-forward rows only at the archive anchor",
          "SELECT entry_id FROM transaction_ledger WHERE entry_id <= 0 AND (ref_type != 'carry' "
          "OR NOT batch_no <= (SELECT through_batch FROM archive_anchor)) "
          "UNION SELECT entry_id FROM transaction_ledger WHERE entry_id > 0 "
          "AND ref_type = 'carry'",
          "misplaced carried-forward rows"),
    # Statements read user_entries (schema.sql): every row it lists is a live ledger row of
    # that account, and it lists every live row up to its mark (rows above the mark are a
    # listing round in progress). Both halves are key lookups, not scans.
    _user_entries,
    _triggers,
)


def audit(path: Path, busy_timeout_ms: int = 5000) -> list[Check]:
    """Run every check in one read transaction (a consistent snapshot under WAL)."""
    conn = None
    try:
        conn = connect(path, busy_timeout_ms, readonly=True)
        conn.execute("BEGIN")
        require_ledger(conn, path)
        return run_checks(conn)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a readable betstream ledger: {exc}") from None
    finally:
        if conn is not None:
            conn.close()


def run_checks(conn: sqlite3.Connection) -> list[Check]:
    """Every check on an open connection (a ledger written before archival existed has no
    anchor table: an empty temporary one stands in, so the checks read the same)."""
    tables = table_names(conn)
    if "archive_anchor" not in tables:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS archive_anchor(through_batch INTEGER, "
                     "head_hash TEXT, seq_max INTEGER)")
    return [check(conn) for check in CHECKS]


def require_ledger(conn: sqlite3.Connection, path: Path) -> None:
    tables = table_names(conn)
    missing = {"users", "transaction_ledger", "bets", "outcomes", "batches", "meta"} - tables
    if missing:
        raise ConfigError(f"{path} is not a betstream ledger (missing {sorted(missing)})")
