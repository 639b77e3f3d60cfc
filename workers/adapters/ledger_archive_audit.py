"""``betstream audit --with-archives``: prove the whole history, archives and live together.

The archive files and the live file are merged into one temporary ledger (archived batches
up to the live anchor, live rows without the carried-forward ones) and the very same checks
as a plain audit run on it, from the genesis hash on: a missing, altered or doubled row in
any file breaks the chain, a balance or a stake check. One more check ties the live file's
carried-forward rows to the sums of what the archives hold.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from producer.errors import ConfigError
from workers.adapters.ledger_archive import (
    BATCH_COLS,
    BET_COLS,
    LEDGER_COLS,
    OUTCOME_COLS,
    Anchor,
    read_anchor,
)
from workers.adapters.ledger_audit import Check, require_ledger, run_checks
from workers.adapters.ledger_store import (
    LEDGER_BY_USER_INDEX,
    connect,
    schema_sql,
    table_names,
)

TABLES = (("batches", BATCH_COLS), ("transaction_ledger", LEDGER_COLS),
          ("outcomes", OUTCOME_COLS), ("bets", BET_COLS))
# Never archived: their live rows are the whole of them (absent in older schema versions).
LIVE_ONLY_TABLES = (("markets", "market, state, updated_seq, settlement, settled_through"),
                    ("holds", "id, user_id, amount, state, expires_at, seq, closed_seq"))


def archive_files(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """(file, first_batch, through_batch) in chain order; none before archival existed."""
    tables = table_names(conn)
    if "archive_files" not in tables:
        return []
    return conn.execute("SELECT file, first_batch, through_batch FROM archive_files "
                        "ORDER BY first_batch").fetchall()


def audit_with_archives(db: Path, archive_dir: Path, busy_timeout_ms: int) -> list[Check]:
    with tempfile.TemporaryDirectory(prefix="betstream-audit-") as tmp:
        merged = sqlite3.connect(Path(tmp) / "merged.sqlite3", isolation_level=None)
        try:
            _prepare(merged)
            anchor, files, carry = _copy_live(merged, db, busy_timeout_ms)
            present = _copy_archives(merged, archive_dir, files, anchor)
            checks = run_checks(merged)
            return [present, *checks, _carry_check(merged, carry, anchor)]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot read the ledger and its archives: {exc}") from None
        finally:
            merged.close()


def _prepare(merged: sqlite3.Connection) -> None:
    merged.execute("PRAGMA journal_mode = OFF")
    merged.execute("PRAGMA synchronous = OFF")
    merged.executescript(schema_sql())
    merged.executescript(f"DROP INDEX outcomes_by_id; {LEDGER_BY_USER_INDEX}; "
                         "CREATE TEMP TABLE carry(user_id INTEGER PRIMARY KEY, amount INTEGER);")


def _copy_live(merged: sqlite3.Connection, db: Path,
               busy_timeout_ms: int) -> tuple[Anchor, list[tuple[str, int, int]], int]:
    """One snapshot of the live file: its rows, its anchor, and its carried-forward rows."""
    live = connect(db, busy_timeout_ms, readonly=True)
    try:
        live.execute("BEGIN")
        require_ledger(live, db)
        anchor, files = read_anchor(live), archive_files(live)
        merged.execute("BEGIN")
        merged.execute("DELETE FROM users")
        _insert(merged, "users", "id, balance, created_at",
                live.execute("SELECT id, balance, created_at FROM users"))
        for table, cols in TABLES:
            where = " WHERE entry_id > 0" if table == "transaction_ledger" else ""
            _insert(merged, table, cols, live.execute(f"SELECT {cols} FROM {table}{where}"))
        present = table_names(live)
        for table, cols in LIVE_ONLY_TABLES:
            if table in present:
                _insert(merged, table, cols, live.execute(f"SELECT {cols} FROM {table}"))
        carry = live.execute("SELECT user_id, amount FROM transaction_ledger "
                             "WHERE entry_id < 0").fetchall()
        merged.executemany("INSERT INTO carry VALUES (?, ?)", carry)
        merged.execute("COMMIT")
        return anchor, files, len(carry)
    finally:
        live.close()


def _insert(merged: sqlite3.Connection, table: str, cols: str, rows: sqlite3.Cursor,
            verb: str = "INSERT") -> None:
    marks = ",".join("?" * len(cols.split(",")))
    merged.executemany(f"{verb} INTO {table}({cols}) VALUES ({marks})", rows)


def _copy_archives(merged: sqlite3.Connection, archive_dir: Path,
                   files: list[tuple[str, int, int]], anchor: Anchor) -> Check:
    """Archived rows up to the anchor (a killed run may have copied more: still live)."""
    missing = [f for f, _, _ in files if not (archive_dir / f).exists()]
    if missing:
        return Check("archive files present", False, f"missing in {archive_dir}: {missing}")
    for file, _, _ in files:
        src = connect(archive_dir / file, 0, readonly=True)
        try:
            merged.execute("BEGIN")
            for table, cols in TABLES:
                keyed = table in ("outcomes", "bets")  # still-live copies are the same rows
                where = "" if keyed else f" WHERE batch_no <= {int(anchor.through_batch)}"
                _insert(merged, table, cols, src.execute(f"SELECT {cols} FROM {table}{where}"),
                        "INSERT OR IGNORE" if keyed else "INSERT")
            merged.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            merged.execute("ROLLBACK")
            return Check("archive files present", False, f"{file}: a row is held twice ({exc})")
        finally:
            src.close()
    return Check("archive files present", True, f"{len(files)} files in {archive_dir}")


def _carry_check(merged: sqlite3.Connection, carry_rows: int, anchor: Anchor) -> Check:
    bad = merged.execute(
        "SELECT a.user_id FROM (SELECT user_id, SUM(amount) AS s FROM transaction_ledger "
        "WHERE batch_no <= ? GROUP BY user_id HAVING s != 0) a "
        "LEFT JOIN carry c ON c.user_id = a.user_id WHERE c.amount IS NOT a.s "
        "UNION SELECT c.user_id FROM carry c WHERE c.amount != COALESCE((SELECT SUM(amount) "
        "FROM transaction_ledger l WHERE l.user_id = c.user_id AND l.batch_no <= ?), 0)",
        (anchor.through_batch, anchor.through_batch)).fetchall()
    name = "carried-forward rows equal the archived sums"
    if bad:
        return Check(name, False, f"{len(bad)} accounts differ, e.g. {[r[0] for r in bad[:5]]}")
    return Check(name, True, f"{carry_rows} accounts through batch {anchor.through_batch}")
