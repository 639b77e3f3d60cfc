"""``betstream archive --before DATE``: move settled history into per-month archive files.

Works in bounded chunks of whole batches, oldest first, each chunk in two steps:

1. copy the chunk's batches, ledger rows, outcomes and settled bets into the month's archive
   file (``INSERT OR IGNORE``, one durable transaction: a re-run copies the same rows again
   harmlessly);
2. one short live transaction: move the archive anchor forward, delete exactly what was
   copied, and fold the deleted rows into each account's carried-forward row, so every
   invariant still holds in the live file alone. It checks the anchor it planned from, so
   two archivers (or a re-run racing a killed one's leftovers) cannot both move it.

A kill between or inside the steps loses nothing and duplicates nothing. The writer is never
stopped: chunks take SQLite's write lock briefly, and nothing the writer caches changes
(balances stay equal; open bets, their placing outcomes and recent outcomes stay live).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import ConfigError, StoreError
from producer.invariants import require
from workers.adapters.ledger_store import (
    LEDGER_BY_USER_INDEX,
    SQL_VARIABLES_MAX,
    connect,
    schema_sql,
    table_names,
)
from workers.core.archive_rules import CARRY_REF, carried, carry_entry_id, period_of
from workers.core.hash_chain import GENESIS_HASH
from workers.logs import get_logger

LEDGER_COLS = "entry_id, txn_id, batch_no, user_id, amount, ref_type, ref_id, created_at"
OUTCOME_COLS = ("seq, id, entry_id, kind, user_id, status, reason, detail, balance, body_sha, "
                "batch_no, committed_at")
BET_COLS = "seq, id, user_id, market, selection, odds, stake, status, settled_seq"
BATCH_COLS = "batch_no, epoch, rows, prev_hash, hash, committed_at"


@dataclass(frozen=True, slots=True)
class Anchor:
    through_batch: int = 0
    head_hash: str = GENESIS_HASH
    seq_max: int = 0
    entry_id_max: int = 0


@dataclass(slots=True)
class Chunk:
    """Everything one step moves: whole batches ``first..through`` of one month."""

    anchor: Anchor
    period: str
    batches: list[tuple] = field(default_factory=list)
    ledger: list[tuple] = field(default_factory=list)
    outcomes: list[tuple] = field(default_factory=list)
    bets: list[tuple] = field(default_factory=list)
    seq_max: int = 0  # highest outcome seq in batches up to ``through`` (moved or not)

    @property
    def through(self) -> int:
        return self.batches[-1][0]

    def after(self, cutoff_ms: int) -> tuple:
        """The anchor row once this chunk is gone from the live file. seq_max is the last
        seq of its batches, also when that outcome stays live (it placed an open bet)."""
        seq_max = self.seq_max
        entry_max = max([self.anchor.entry_id_max] + [r[0] for r in self.ledger])
        return (self.through, self.batches[-1][4], seq_max, entry_max, cutoff_ms)


@dataclass
class ArchiveResult:
    cutoff_ms: int
    chunks: int = 0
    batches: int = 0
    ledger_rows: int = 0
    files: set[str] = field(default_factory=set)


def read_anchor(conn: sqlite3.Connection) -> Anchor:
    row = conn.execute("SELECT through_batch, head_hash, seq_max, entry_id_max "
                       "FROM archive_anchor").fetchone()
    return Anchor(*row) if row else Anchor()


def plan_chunk(conn: sqlite3.Connection, cutoff_ms: int, rows_max: int,
               batches_max: int) -> Chunk | None:
    """The next chunk of batches committed before ``cutoff_ms`` (one read snapshot)."""
    anchor = read_anchor(conn)
    candidates = conn.execute(
        f"SELECT {BATCH_COLS} FROM batches WHERE batch_no > ? ORDER BY batch_no LIMIT ?",
        (anchor.through_batch, batches_max)).fetchall()
    if not candidates or candidates[0][5] >= cutoff_ms:
        return None
    chunk = Chunk(anchor, period_of(candidates[0][5]))
    rows = 0
    for batch in candidates:
        if batch[5] >= cutoff_ms or period_of(batch[5]) != chunk.period:
            break
        if chunk.batches and rows + batch[2] > rows_max:
            break
        chunk.batches.append(batch)
        rows += batch[2]
    _fill(conn, chunk)
    return chunk


def _fill(conn: sqlite3.Connection, chunk: Chunk) -> None:
    a = chunk.anchor
    chunk.ledger = _until(conn.execute(
        f"SELECT {LEDGER_COLS} FROM transaction_ledger WHERE entry_id > ? ORDER BY entry_id",
        (a.entry_id_max,)), 2, chunk.through)
    outcomes = _until(conn.execute(
        f"SELECT {OUTCOME_COLS} FROM outcomes WHERE seq > ? ORDER BY seq", (a.seq_max,)),
        10, chunk.through)
    seq_max = chunk.seq_max = max([a.seq_max] + [o[0] for o in outcomes])
    # Settled bets leave with their settlement; open bets (and their placing outcome) stay.
    chunk.bets = conn.execute(f"SELECT {BET_COLS} FROM bets WHERE settled_seq IS NOT NULL "
                              "AND settled_seq <= ?", (seq_max,)).fetchall()
    staying = {r[0] for r in conn.execute(
        "SELECT seq FROM bets WHERE seq > ? AND seq <= ? AND "
        "(settled_seq IS NULL OR settled_seq > ?)", (a.seq_max, seq_max, seq_max))}
    held = [b[0] for b in chunk.bets if b[0] <= a.seq_max]  # placed in an archived batch
    chunk.outcomes = [o for o in outcomes if o[0] not in staying] + _by_seq(conn, held)


def _until(cursor: sqlite3.Cursor, batch_col: int, through: int) -> list[tuple]:
    """Rows in ascending order up to the last one of batch ``through``."""
    out = []
    for row in cursor:
        if row[batch_col] > through:
            break
        out.append(row)
    cursor.close()
    return out


def _by_seq(conn: sqlite3.Connection, seqs: list[int]) -> list[tuple]:
    out: list[tuple] = []
    for start in range(0, len(seqs), SQL_VARIABLES_MAX):
        chunk = seqs[start:start + SQL_VARIABLES_MAX]
        out += conn.execute(f"SELECT {OUTCOME_COLS} FROM outcomes WHERE seq IN "
                            f"({','.join('?' * len(chunk))}) ORDER BY seq", chunk).fetchall()
    return out


def open_archive(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """An archive file has the ledger's own schema (append-only triggers included)."""
    conn = connect(path, busy_timeout_ms)
    conn.executescript(schema_sql())
    # History may hold an id twice: the original outcome and, once that was archived, a
    # `stale` refusal of the same intent re-sent. Lookups by id still have an index.
    # An archive is written once and then read by statements: it keeps the per-account
    # index the live ledger replaced with user_entries (which stays empty here).
    conn.executescript("DROP INDEX IF EXISTS outcomes_by_id; "
                       "CREATE INDEX IF NOT EXISTS outcomes_id ON outcomes(id); "
                       f"{LEDGER_BY_USER_INDEX}; "
                       "INSERT OR IGNORE INTO meta(key, value) VALUES ('archive', 1);")
    return conn


def copy_chunk(archive: sqlite3.Connection, chunk: Chunk) -> None:
    """Step 1: the chunk becomes durable in the archive file (idempotent)."""
    x = archive.executemany
    archive.execute("BEGIN IMMEDIATE")
    try:
        x(f"INSERT OR IGNORE INTO batches({BATCH_COLS}) VALUES (?,?,?,?,?,?)", chunk.batches)
        x(f"INSERT OR IGNORE INTO transaction_ledger({LEDGER_COLS}) VALUES (?,?,?,?,?,?,?,?)",
          chunk.ledger)
        x(f"INSERT OR IGNORE INTO outcomes({OUTCOME_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
          chunk.outcomes)
        x(f"INSERT OR IGNORE INTO bets({BET_COLS}) VALUES (?,?,?,?,?,?,?,?,?)", chunk.bets)
        _require_copied(archive, chunk)
        archive.execute("COMMIT")
    except BaseException:
        archive.execute("ROLLBACK")
        raise


def _require_copied(archive: sqlite3.Connection, chunk: Chunk) -> None:
    """The archive holds exactly this chunk's batches and rows before anything live goes:
    ``INSERT OR IGNORE`` would keep a different row already there under the same key (a
    ledger restored from an old backup, the wrong archive directory)."""
    first, through = chunk.batches[0][0], chunk.through
    held = archive.execute(f"SELECT {BATCH_COLS} FROM batches WHERE batch_no BETWEEN ? AND ? "
                           "ORDER BY batch_no", (first, through)).fetchall()
    rows = archive.execute("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM transaction_ledger "
                           "WHERE batch_no BETWEEN ? AND ?", (first, through)).fetchone()
    require(held == chunk.batches and rows == (len(chunk.ledger),
                                               sum(r[4] for r in chunk.ledger)),
            f"archive file disagrees with the live batches {first}..{through}: refusing to "
            "remove them from the live ledger")


def remove_chunk(live: sqlite3.Connection, chunk: Chunk, file: str, cutoff_ms: int) -> bool:
    """Step 2: one short live transaction. False when another archiver moved the anchor
    since this chunk was planned (nothing is changed then; plan again)."""
    live.execute("BEGIN IMMEDIATE")
    try:
        if read_anchor(live) != chunk.anchor:
            live.execute("ROLLBACK")
            return False
        _remove(live, chunk, file, cutoff_ms)
        live.execute("COMMIT")
        return True
    except BaseException:
        if live.in_transaction:
            live.execute("ROLLBACK")
        raise


def _remove(live: sqlite3.Connection, chunk: Chunk, file: str, cutoff_ms: int) -> None:
    """Move the anchor past the chunk, then replace its rows by carried-forward balances
    (in the caller's transaction: all of it, or none)."""
    live.execute("INSERT OR REPLACE INTO archive_anchor(id, through_batch, head_hash, seq_max, "
                 "entry_id_max, cutoff_ms, updated_at) VALUES (1, ?, ?, ?, ?, ?, ?)",
                 (*chunk.after(cutoff_ms), int(time.time() * 1000)))
    carry = _carried_balances(live, chunk)
    _delete_ledger_rows(live, chunk)
    _write_carry_rows(live, chunk, carry)
    _delete_archived_rows(live, chunk, file)


def _carried_balances(live: sqlite3.Connection, chunk: Chunk) -> dict[int, int]:
    old = dict(live.execute("SELECT user_id, amount FROM transaction_ledger WHERE entry_id < 0"))
    new = carried(old, ((r[3], r[4]) for r in chunk.ledger))
    require(sum(new.values()) == sum(old[a] for a in new if a in old),
            "archived rows do not sum to zero")
    return new


def _delete_ledger_rows(live: sqlite3.Connection, chunk: Chunk) -> None:
    if not chunk.ledger:
        return
    first, last = chunk.ledger[0][0], chunk.ledger[-1][0]  # contiguous per batch: one range
    live.execute("DELETE FROM transaction_ledger WHERE entry_id BETWEEN ? AND ?", (first, last))
    live.executemany("DELETE FROM user_entries WHERE user_id = ? AND entry_id BETWEEN ? AND ?",
                     [(a, first, last) for a in sorted({r[3] for r in chunk.ledger})])


def _write_carry_rows(live: sqlite3.Connection, chunk: Chunk, carry: dict[int, int]) -> None:
    live.executemany("DELETE FROM transaction_ledger WHERE entry_id = ?",
                     [(carry_entry_id(a),) for a in carry])
    last_at = chunk.batches[-1][5]
    live.executemany(
        "INSERT INTO transaction_ledger(entry_id, txn_id, batch_no, user_id, amount, ref_type, "
        "ref_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(carry_entry_id(a), CARRY_REF, chunk.through, a, amount, CARRY_REF,
          f"archived-through-batch-{chunk.through}", last_at)
         for a, amount in sorted(carry.items()) if amount])


def _delete_archived_rows(live: sqlite3.Connection, chunk: Chunk, file: str) -> None:
    live.execute("DELETE FROM batches WHERE batch_no BETWEEN ? AND ?",
                 (chunk.batches[0][0], chunk.through))
    live.executemany("DELETE FROM outcomes WHERE seq = ?", [(o[0],) for o in chunk.outcomes])
    live.executemany("DELETE FROM bets WHERE seq = ?", [(b[0],) for b in chunk.bets])
    live.execute("INSERT INTO archive_files(file, first_batch, through_batch) VALUES (?, ?, ?) "
                 "ON CONFLICT(file) DO UPDATE SET through_batch = excluded.through_batch",
                 (file, chunk.batches[0][0], chunk.through))


def archive(db: Path, archive_dir: Path, cutoff_ms: int, *, busy_timeout_ms: int,
            rows_max: int, batches_max: int, pause_ms: int,
            progress: Callable[[ArchiveResult, Chunk], None] | None = None) -> ArchiveResult:
    """Archive every batch committed before ``cutoff_ms``; safe to kill and to re-run."""
    log = get_logger("betstream.archive")
    live = _open_live(db, busy_timeout_ms)
    archives: dict[str, sqlite3.Connection] = {}
    result = ArchiveResult(cutoff_ms)
    try:
        while (chunk := _plan(live, cutoff_ms, rows_max, batches_max)) is not None:
            file = f"{chunk.period}.sqlite3"
            if file not in archives:
                archives[file] = open_archive(archive_dir / file, busy_timeout_ms)
            copy_chunk(archives[file], chunk)
            started = time.monotonic()
            if not remove_chunk(live, chunk, file, cutoff_ms):
                log.warning("archive.raced", through_batch=chunk.through)
                continue
            _count(result, chunk, file)
            log.info("archive.chunk", file=file, through_batch=chunk.through,
                     ledger_rows=len(chunk.ledger), outcomes=len(chunk.outcomes),
                     live_lock_ms=round((time.monotonic() - started) * 1000, 1))
            if progress:
                progress(result, chunk)
            time.sleep(pause_ms / 1000)  # let the writer in between chunks
    except sqlite3.Error as exc:
        raise StoreError(f"archival stopped (re-run to resume): {exc}") from exc
    finally:
        live.close()
        for conn in archives.values():
            conn.close()
    return result


def _plan(live: sqlite3.Connection, cutoff_ms: int, rows_max: int,
          batches_max: int) -> Chunk | None:
    live.execute("BEGIN")  # one read snapshot for the whole plan
    try:
        return plan_chunk(live, cutoff_ms, rows_max, batches_max)
    finally:
        live.execute("COMMIT")


def _count(result: ArchiveResult, chunk: Chunk, file: str) -> None:
    result.chunks += 1
    result.batches += len(chunk.batches)
    result.ledger_rows += len(chunk.ledger)
    result.files.add(file)


def _open_live(db: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    if not Path(db).exists():
        raise ConfigError(f"database not found: {db}")
    conn = connect(db, busy_timeout_ms)
    tables = table_names(conn)
    if "archive_anchor" not in tables:
        conn.close()
        raise ConfigError(f"{db} predates archival (schema 3): start the writer once to "
                          "upgrade it")
    return conn
