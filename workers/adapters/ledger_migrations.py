"""Schema upgrades, applied by the writer when it opens an older ledger file.

Each step is one transaction: a file is at one version or the next, never in between.
Only additive steps live here; anything that would rewrite history is not a migration.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from workers.adapters.ledger_listing import LISTED_ACCOUNT_MIN

# version -> SQL that lifts a file from that version to the next one. The new tables and
# indexes themselves come from schema.sql (CREATE ... IF NOT EXISTS) before this runs.
STEPS: Final[dict[int, tuple[str, ...]]] = {
    2: (  # 3: archival may remove batches the archive anchor covers, nothing else
        "DROP TRIGGER IF EXISTS ledger_no_delete",
        "CREATE TRIGGER ledger_no_delete BEFORE DELETE ON transaction_ledger "
        "WHEN OLD.batch_no > COALESCE((SELECT through_batch FROM archive_anchor), 0) "
        "BEGIN SELECT RAISE(ABORT, 'transaction_ledger is append-only'); END",
        "UPDATE meta SET value = 3 WHERE key = 'schema_version'",
    ),
    3: (  # 4: an index nothing reads, ~15 % of every commit (docs/performance.md)
        "DROP INDEX IF EXISTS bets_by_market",
        "UPDATE meta SET value = 4 WHERE key = 'schema_version'",
    ),
    4: (  # 5: statements read user_entries, kept in bulk; the per-posting index goes
        # Users' rows only: system accounts are found by a scan
        # (workers/adapters/ledger_listing.py).
        "INSERT OR IGNORE INTO user_entries(user_id, entry_id) SELECT user_id, entry_id "
        f"FROM transaction_ledger WHERE entry_id > 0 AND user_id >= {LISTED_ACCOUNT_MIN} "
        "ORDER BY user_id, entry_id",
        # Only real rows: carried-forward ones (entry_id < 0) are found by their fixed ids.
        "UPDATE meta SET value = (SELECT COALESCE(MAX(entry_id), 0) FROM transaction_ledger "
        "WHERE entry_id > 0) WHERE key = 'user_entries_through'",
        "DROP INDEX IF EXISTS ledger_by_user",
        "UPDATE meta SET value = 5 WHERE key = 'schema_version'",
    ),
    5: (  # 6: market states (contract v1.1); the table itself comes from schema.sql
        "UPDATE meta SET value = 6 WHERE key = 'schema_version'",
    ),
    6: (  # 7: withdrawal holds (contract v1.1): the pending account; the table: schema.sql
        "INSERT OR IGNORE INTO users(id, balance, created_at) VALUES (-3, 0, 0)",
        "UPDATE meta SET value = 7 WHERE key = 'schema_version'",
    ),
}


def upgrade(conn: sqlite3.Connection, version: int) -> int:
    """Apply every step from ``version`` on; return the version reached."""
    while version in STEPS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in STEPS[version]:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version += 1
    return version
