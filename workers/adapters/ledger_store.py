"""SQLite adapter for the ledger: schema, durable settings, reads, and the batch commit.

Every commit is one ``BEGIN IMMEDIATE`` transaction that first checks the fencing epoch,
so a writer that lost its lease cannot commit. Anything that goes wrong rolls back: a
batch is either wholly durable (WAL + ``synchronous=FULL``) or not there at all.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache, partial
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Final, TypeVar

from producer.errors import (
    BetstreamError,
    ConfigError,
    FencedOut,
    InvariantViolation,
    StoreError,
)
from producer.invariants import require
from workers.adapters.ledger_listing import LISTING_CACHE_MB, list_round
from workers.adapters.ledger_migrations import upgrade
from workers.adapters.ledger_queries import first_outcome
from workers.core.batch_rows import BatchWrite, Heads, OutcomeRow, Stored
from workers.core.decision import BetState, HoldState
from workers.core.hash_chain import GENESIS_HASH
from workers.settings import Listing

SCHEMA_VERSION: Final = 7
CHECKPOINT_INTERVAL_MS_DEFAULT: Final = 200
WAL_AUTOCHECKPOINT_PAGES: Final = 50_000  # ~200 MB: only if the checkpointer falls behind
JOURNAL_SIZE_LIMIT_BYTES: Final = 256 * 2**20  # the WAL file is truncated back to this
CACHE_MB_DEFAULT: Final = 256  # page cache per connection: the hot B-tree pages stay in RAM
SQL_VARIABLES_MAX: Final = 900  # stay below SQLite's bound on host parameters per statement
ROWS_PER_INSERT_MAX: Final = 512  # rows per multi-row INSERT (also bounded by SQLite's limit)
# Compiled statements kept per connection: the writer runs 100-115 texts (each shape at up
# to ten power-of-two lengths, see _chunks); Python's default of 128 leaves little room.
STATEMENTS_CACHED_MAX: Final = 256
# The per-account index of archive files and of the audit's merged copy, which are
# written in bulk and then only read (the live ledger has user_entries instead).
LEDGER_BY_USER_INDEX: Final = ("CREATE INDEX IF NOT EXISTS ledger_by_user "
                               "ON transaction_ledger(user_id, entry_id)")
PRIVATE_FILE_MODE: Final = 0o600  # ledgers, archives, backups: readable by their owner only


def bind_plainly() -> None:
    """Bind bytes and None as they are, without sqlite3's adaptation lookup.

    Python's sqlite3 (3.11) binds exact int, float, str and bytearray directly, but sends
    bytes and None through its adapter protocol: a registry miss, then a failed
    ``PrepareProtocol.__adapt__`` lookup that formats an AttributeError and discards it.
    Each outcome binds three of them (``body_sha``, ``reason``, ``detail``): callgrind
    counted 3.5 % of the writer's instructions there, on the committer thread while it
    holds the GIL. Identity adapters find the registry entry instead and bind the same
    values (a BLOB, a NULL). Process-wide and idempotent."""
    sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself for exact bytes
    sqlite3.register_adapter(type(None), _none)


def _none(value: None) -> None:
    return value


def schema_sql() -> str:
    """The ledger's schema (``schema.sql`` beside this module): idempotent, so applying it
    to a file that has it changes nothing."""
    return resources.files(__package__).joinpath("schema.sql").read_text()


def read_only_uri(path: Path | str) -> str:
    """A read-only SQLite URI for ``path``, quoted: a ``#`` or ``?`` in a file name would
    otherwise end the path, and SQLite would open (and create) another file."""
    return f"{Path(path).resolve().as_uri()}?mode=ro"


T = TypeVar("T")


def read_ledger(path: Path, busy_timeout_ms: int, read: Callable[[sqlite3.Connection], T]
                ) -> T | None:
    """``read`` on a short-lived read-only connection; None when the ledger cannot be read
    (not created yet, its schema not yet, unreadable): for answers that say "not known"
    rather than fail (a bet lookup, a balance, health)."""
    try:
        conn = connect(path, busy_timeout_ms, readonly=True)
    except (BetstreamError, sqlite3.Error):
        return None
    try:
        return read(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def table_names(conn: sqlite3.Connection) -> set[str]:
    """The tables a ledger file has (older schema versions lack the newer ones)."""
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _with_seq(settlement: str | None, seq: int) -> str | None:
    """A settle_market's stored record: its results and the seq of its own outcome."""
    if settlement is None:
        return None
    return json.dumps({**json.loads(settlement), "seq": seq}, separators=(",", ":"))


def create_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600; False, leaving it as it is, when anything is
    there already (a file, or a symlink, even a dangling one: it is never followed).

    SQLite keeps the mode of an existing file and gives its -wal and -shm files the mode
    of the database file, so a ledger, archive or backup created here stays private to
    its owner whatever the process umask (the CLI's is 077 anyway)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))
    except FileExistsError:
        return False
    return True


def connect(path: Path, busy_timeout_ms: int, readonly: bool = False,
            cache_mb: int = CACHE_MB_DEFAULT) -> sqlite3.Connection:
    """A connection with the durability settings the ledger depends on."""
    bind_plainly()
    if readonly:
        if not Path(path).exists():
            raise ConfigError(f"database not found: {path}")
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            create_private(path)  # an empty file is a new database to SQLite
        except OSError:
            pass  # SQLite says why it cannot open the file, as a sqlite3.Error callers handle
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               cached_statements=STATEMENTS_CACHED_MAX)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise ConfigError(f"{path}: cannot switch to WAL (journal_mode={mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = -{int(cache_mb) * 1024}")  # KiB when negative
        conn.execute("PRAGMA temp_store = MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


class Beside:
    """Runs ``work`` every ``interval_ms`` on its own connection and thread, beside the
    writer (sqlite3 releases the GIL while SQLite works). A failed run is retried at the
    next interval on a fresh connection.

    Two run beside the writer: the checkpointer, which copies the WAL back into the
    database (SQLite's automatic checkpoint would run inside the writer's COMMIT and stall
    it; the writer keeps a large one as a bound should this stop), and the lister, which
    lists ledger rows in user_entries (workers/adapters/ledger_listing.py).
    """

    def __init__(self, name: str, path: Path, interval_ms: int, busy_timeout_ms: int,
                 work: Callable[[sqlite3.Connection], object],
                 cache_mb: int = CACHE_MB_DEFAULT) -> None:
        self._path = path
        self._interval_s = interval_ms / 1000
        self._busy_timeout_ms = busy_timeout_ms
        self._work = work
        self._cache_mb = cache_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = None
        while not self._stop.wait(self._interval_s):
            try:
                conn = conn or connect(self._path, self._busy_timeout_ms,
                                       cache_mb=self._cache_mb)
                self._work(conn)
            except (sqlite3.Error, ConfigError):
                if conn is not None:
                    conn.close()
                conn = None  # retried at the next interval
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


class Store:
    """The writer's handle on the ledger file."""

    def __init__(self, path: Path, busy_timeout_ms: int,
                 checkpoint_interval_ms: int = CHECKPOINT_INTERVAL_MS_DEFAULT,
                 listing: Listing | None = None) -> None:
        """``listing``: list ledger rows in user_entries beside the writer (the writer
        passes its settings; without it nothing lists, as in a test)."""
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._conn = self._open()
        self._broken = False
        self._vars_max = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._beside = [Beside("checkpointer", self.path, checkpoint_interval_ms,
                               busy_timeout_ms, _checkpoint)] if checkpoint_interval_ms else []
        try:
            self._check_version()
            self.heads = self._read_heads()
            if listing is not None:  # once the file is upgraded: it lists into schema 5
                self._beside.append(Beside(
                    "lister", self.path, listing.interval_ms, busy_timeout_ms,
                    partial(list_round, lag_rows_min=listing.lag_rows_min,
                            slice_rows_max=listing.slice_rows_max),
                    LISTING_CACHE_MB))
        except BaseException:
            self.close()  # the caller retries with a new Store: leave no thread behind
            raise

    def _check_version(self) -> None:
        try:
            version = upgrade(self._conn, self._meta("schema_version"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the ledger {self.path}: {exc}") from exc
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{self.path}: schema version {version}, this betstream needs "
                              f"{SCHEMA_VERSION} and has no upgrade from it: start a new file")
        # An older betstream started on this file re-creates ledger_by_user (its schema.sql
        # runs before it refuses version 5), and every commit would keep it up again.
        try:
            self._conn.execute("DROP INDEX IF EXISTS ledger_by_user")  # no lock when absent
        except sqlite3.Error as exc:
            raise StoreError(f"cannot drop the old index ledger_by_user: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        conn = None
        try:
            conn = connect(self.path, self._busy_timeout_ms)
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
            conn.executescript(schema_sql())
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()  # a half-open connection would pin a read-only file handle
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                # Not a passing fault: retrying would only keep the breaker open forever.
                raise ConfigError(f"{self.path} is not an SQLite database (wrong BETSTREAM_DB, "
                                  "or the file is damaged: restore it from a backup)") from None
            raise StoreError(f"cannot open ledger {self.path}: {exc}") from exc

    def _healthy_conn(self) -> sqlite3.Connection:
        """After a failed commit, start over on a fresh connection (a read-only or full
        file, a lost file handle): SQLite's own recovery runs when it opens the file.

        The heads are read again from the file: a COMMIT reported as failed may be durable
        all the same (fsync said EIO after the WAL frames reached the disk, and WAL recovery
        found them), and the next batch must continue from what is really there.
        """
        if self._broken:
            self._conn.close()
            self._conn = self._open()
            self.heads = self._read_heads()
            self._broken = False
        return self._conn

    def close(self) -> None:
        for thread in self._beside:
            thread.stop()
        self._conn.close()

    def _meta(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _read_heads(self) -> Heads:
        """Where the next batch continues: the newest live rows, or the archive anchor when
        archival moved everything (seqs, entry ids and the hash chain never restart)."""
        q = self._conn.execute
        try:
            anchor = q("SELECT through_batch, head_hash, seq_max, entry_id_max "
                       "FROM archive_anchor").fetchone() or (0, GENESIS_HASH, 0, 0)
            seq = q("SELECT COALESCE(MAX(seq), 0) FROM outcomes").fetchone()[0]
            entry = q("SELECT COALESCE(MAX(entry_id), 0) FROM transaction_ledger").fetchone()[0]
            last = q("SELECT batch_no, hash FROM batches ORDER BY batch_no DESC "
                     "LIMIT 1").fetchone()
        except sqlite3.Error as exc:  # a StoreError is retried; a raw one ended the writer
            self._broken = True
            raise StoreError(f"cannot read where the ledger ends: {exc}") from exc
        batch_no, digest = last if last else anchor[:2]
        return Heads(max(seq, anchor[2]), batch_no, max(entry, anchor[3]), digest)

    def bump_epoch(self) -> int:
        """Take the fencing epoch: every older writer's next commit will fail."""
        self._healthy_conn()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'epoch'")
            epoch = self._meta("epoch")
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._broken = True
            raise StoreError(f"cannot take the fencing epoch: {exc}") from exc
        self.heads = self._read_heads()  # another writer may have committed before us
        return epoch

    def lookup(self, ids: Iterable[str], entry_ids: Iterable[str]) -> Stored:
        """Outcomes already stored for these intent ids or stream entries."""
        by_id: dict[str, OutcomeRow] = {}
        by_entry: dict[str, OutcomeRow] = {}
        cols = ("seq, id, entry_id, kind, user_id, status, reason, detail, balance, body_sha, "
                "batch_no, committed_at")
        first = first_outcome()
        for chunk in _chunks(sorted(set(ids)), self._vars_per_read()):
            sql = f"SELECT {cols} FROM outcomes WHERE {first} AND id IN ({_marks(chunk)})"
            for row in self._read(sql, chunk):
                by_id[row[1]] = OutcomeRow(*row)
        for chunk in _chunks(sorted(set(entry_ids)), self._vars_per_read()):
            sql = f"SELECT {cols} FROM outcomes WHERE entry_id IN ({_marks(chunk)})"
            for row in self._read(sql, chunk):
                by_entry[row[2]] = OutcomeRow(*row)
        return Stored(by_id, by_entry)

    def load_balances(self, accounts: Iterable[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for chunk in _chunks(sorted(set(accounts)), self._vars_per_read()):
            sql = f"SELECT id, balance FROM users WHERE id IN ({_marks(chunk)})"
            out.update(self._read(sql, chunk))
        return out

    def load_bets(self, bet_ids: Iterable[str]) -> dict[str, BetState]:
        out: dict[str, BetState] = {}
        for chunk in _chunks(sorted(set(bet_ids)), self._vars_per_read()):
            sql = ("SELECT b.id, b.user_id, b.stake, b.odds, b.status, b.seq, b.market, "
                   "b.selection FROM outcomes o "
                   f"JOIN bets b ON b.seq = o.seq WHERE {first_outcome('o')} "
                   f"AND o.id IN ({_marks(chunk)})")
            for row in self._read(sql, chunk):
                out[row[0]] = BetState(*row)
        return out

    def load_settlements(self) -> list[tuple[str, str, int]]:
        """(market, settlement JSON, settled_through) of every market being settled."""
        return self._read("SELECT market, settlement, settled_through FROM markets "
                          "WHERE state = 'settling' ORDER BY settlement ->> '$.seq'", ())

    def open_bets_after(self, market: str, after_seq: int, before_seq: int,
                        limit: int) -> list[BetState]:
        """Up to ``limit`` open bets on ``market`` placed after ``after_seq`` and before
        ``before_seq``, in bet order: a walk of bets by seq between the two (there is no
        index by market, on purpose), so one pass over them per resulted market."""
        rows = self._read("SELECT id, user_id, stake, odds, status, seq, market, selection "
                          "FROM bets WHERE seq > ? AND seq < ? AND market = ? "
                          "AND status = 'open' ORDER BY seq LIMIT ?",
                          (after_seq, before_seq, market, limit))
        return [BetState(*row) for row in rows]

    def load_holds(self, hold_ids: Iterable[str]) -> dict[str, HoldState]:
        out: dict[str, HoldState] = {}
        for chunk in _chunks(sorted(set(hold_ids)), self._vars_per_read()):
            sql = ("SELECT id, user_id, amount, state, expires_at FROM holds "
                   f"WHERE id IN ({_marks(chunk)})")
            for row in self._read(sql, chunk):
                out[row[0]] = HoldState(*row)
        return out

    def holds_due(self, now_ms: int, limit: int) -> list[HoldState]:
        """Open holds whose time has come by ``now_ms``, soonest first."""
        rows = self._read("SELECT id, user_id, amount, state, expires_at FROM holds "
                          "WHERE state = 'open' AND expires_at IS NOT NULL AND expires_at <= ? "
                          "ORDER BY expires_at LIMIT ?", (now_ms, limit))
        return [HoldState(*row) for row in rows]

    def next_hold_due(self) -> int | None:
        """When the next open hold falls due (ms); None if none has a time."""
        rows = self._read("SELECT MIN(expires_at) FROM holds WHERE state = 'open' "
                          "AND expires_at IS NOT NULL", ())
        return rows[0][0]

    def load_markets(self, markets: Iterable[str]) -> dict[str, str]:
        """The state of each of these markets the ledger names (absent: open)."""
        out: dict[str, str] = {}
        for chunk in _chunks(sorted(set(markets)), self._vars_per_read()):
            out.update(self._read(f"SELECT market, state FROM markets WHERE market IN "
                                  f"({_marks(chunk)})", chunk))
        return out

    def _vars_per_read(self) -> int:
        """Values per IN list (and twice the accounts per balance update): a power of two."""
        return _pow2_floor(self._vars_max, SQL_VARIABLES_MAX)

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple]:
        try:
            return self._healthy_conn().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            self._broken = True
            raise StoreError(f"ledger read failed: {exc}") from exc

    def commit(self, batch: BatchWrite) -> None:
        """Write one batch in one transaction, or nothing at all."""
        self._healthy_conn()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            epoch = self._meta("epoch")
            if epoch != batch.epoch:
                raise FencedOut(f"fencing epoch is {epoch}, this writer holds {batch.epoch}")
            self._write(batch)
            self._conn.execute("COMMIT")
        except FencedOut:
            self._rollback()
            raise
        except InvariantViolation as exc:  # a bug, not a fault: the writer stops on it
            self._rollback()
            raise InvariantViolation(f"batch {batch.batch_no} rolled back: {exc}") from exc
        except sqlite3.Error as exc:
            self._rollback()
            self._broken = True
            raise StoreError(f"batch {batch.batch_no} not known to be committed (retried; "
                             f"nothing is acknowledged until it is): {exc}") from exc
        self.heads = batch.after

    def _write(self, batch: BatchWrite) -> None:
        # Multi-row statements (one sqlite3_step and one GIL hand-off each), except for the
        # few settlements.
        self._post_balances(batch.balance_deltas)
        self._insert("transaction_ledger(entry_id, txn_id, user_id, amount, ref_type, ref_id, "
                     "created_at, batch_no)", batch.ledger, consts=(batch.batch_no,))
        self._insert("bets(seq, id, user_id, market, selection, odds, stake, status)",
                     batch.new_bets, consts=("open",))
        cur = self._conn.executemany(
            "UPDATE bets SET status = ?, settled_seq = ? WHERE seq = ? AND status = 'open'",
            batch.settled_bets)
        require(cur.rowcount == len(batch.settled_bets) or not batch.settled_bets,
                "a settled bet was not open on disk")
        self._insert_outcomes(batch)
        self._write_holds(batch)
        self._conn.executemany(  # few rows, and rarely any
            "INSERT INTO markets(market, state, updated_seq, settlement, settled_through) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(market) DO UPDATE SET state = excluded.state, "
            "updated_seq = excluded.updated_seq, "
            "settlement = COALESCE(excluded.settlement, markets.settlement), "
            "settled_through = COALESCE(excluded.settled_through, markets.settled_through)",
            [(ch.market, ch.state, seq, _with_seq(ch.settlement, seq), ch.settled_through)
             for ch, seq in batch.market_changes])
        self._conn.execute(
            "INSERT INTO batches(batch_no, epoch, rows, prev_hash, hash, committed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (batch.batch_no, batch.epoch, len(batch.ledger), batch.prev_hash, batch.hash,
             batch.committed_at))

    def _write_holds(self, batch: BatchWrite) -> None:
        """Holds opened, then closed (a hold may open and close in one batch); a close
        finds its hold open on disk or the batch is a bug."""
        self._insert("holds(id, user_id, amount, expires_at, seq, state)", batch.new_holds,
                     consts=("open",))
        cur = self._conn.executemany(
            "UPDATE holds SET state = ?, closed_seq = ? WHERE id = ? AND state = 'open'",
            batch.closed_holds)
        require(cur.rowcount == len(batch.closed_holds) or not batch.closed_holds,
                "a closed hold was not open on disk")

    def _post_balances(self, deltas: Sequence[tuple[int, int, int]]) -> None:
        """Add each account's delta; an account seen for the first time is created first.

        Deltas, not absolute values: users.balance stays the sum of its ledger rows even if
        a cached balance were wrong, and the CHECK refuses any player going below zero.
        Every posted account is updated, a delta of 0 too: the rows updated say whether
        any account is missing, so existing accounts (nearly all) cost no insert attempt.
        (Not an upsert: SQLite checks CHECK constraints on the would-be inserted row.)
        """
        accounts_max = _pow2_floor(self._vars_per_read() // 2, ROWS_PER_INSERT_MAX)
        for chunk in _chunks(deltas, accounts_max):
            updated = self._add_deltas(chunk)
            if updated == len(chunk):
                continue
            ids = [acc for acc, _, _ in chunk]
            sql = f"SELECT id FROM users WHERE id IN ({_marks(ids)})"
            known = {row[0] for row in self._conn.execute(sql, ids)}
            new = [d for d in chunk if d[0] not in known]
            self._insert("users(id, balance, created_at)", [(acc, 0, at) for acc, _, at in new])
            # Each account once: every delta applied exactly once, or the batch rolls back.
            updated += sum(self._add_deltas(part) for part in _chunks(new, accounts_max))
            require(updated == len(chunk) == len(set(ids)),
                    "a balance update missed an account or met one twice")

    def _add_deltas(self, chunk: Sequence[tuple[int, int, int]]) -> int:
        """``balance += delta`` for each (account, delta, _); returns the rows updated."""
        return self._conn.execute(
            "UPDATE users SET balance = balance + d.column2 FROM (VALUES "
            f"{_values(len(chunk), 2)}) AS d WHERE users.id = d.column1",
            [v for acc, delta, _ in chunk for v in (acc, delta)]).rowcount

    def _insert_outcomes(self, batch: BatchWrite) -> None:
        """In seq order, so the rows append to the table's B-tree. (Plain acceptances as a
        shape of their own bound 5 fewer values each, but split a batch with rejections
        out of order: +8 % outcome pages at 10 % rejections; not kept.) build_batch gives
        every outcome the batch's batch_no and committed_at, bound once here."""
        self._insert("outcomes(seq, id, entry_id, kind, user_id, status, reason, detail, "
                     "balance, body_sha, batch_no, committed_at)",
                     [(o.seq, o.id, o.entry_id, o.kind, o.user_id, o.status, o.reason, o.detail,
                       o.balance, o.body_sha) for o in batch.outcomes],
                     consts=(batch.batch_no, batch.committed_at))

    def _insert(self, table: str, rows: Sequence[tuple], consts: tuple = ()) -> None:
        """Multi-row ``INSERT ... VALUES (..),(..)``: each statement is one sqlite3_step, run
        without the GIL and without a Python round per row (executemany binds and steps
        row by row).

        ``consts`` fill the table's last columns in every row: bound once per statement
        instead of once per row (binding holds the GIL; ~1/3 of a commit)."""
        if not rows:
            return
        width, fixed = len(rows[0]), len(consts)
        for chunk in _chunks(rows, _pow2_floor((self._vars_max - fixed) // width,
                                               ROWS_PER_INSERT_MAX)):
            self._conn.execute(f"INSERT INTO {table} {_rows_sql(len(chunk), width, fixed)}",
                               [*consts, *chain.from_iterable(chunk)])

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection rolls back by itself when the statement failed hard


@lru_cache(maxsize=64)  # the shapes a batch uses recur every batch; a rare one is evicted
def _rows_sql(rows: int, width: int, fixed: int) -> str:
    """What follows ``INSERT INTO t(cols)``: ``rows`` rows of ``width`` parameters, each
    followed by the same ``fixed`` constants, bound first (``[*consts, *row values]``).

    Only anonymous ``?`` placeholders: SQLite numbers them in the order they appear, so
    the constants' come first in the SELECT list. Numbered ones (``?1``)
    cost a linear search per placeholder where SQLite maps numbers to names. Python
    3.11 never asks, but from 3.12 on its sqlite3 module asks for every parameter it
    binds: an insert of 512 rows bound ~80x slower than this one there."""
    if not fixed:
        return "VALUES " + _values(rows, width)
    columns = ",".join(f"column{i}" for i in range(1, width + 1))
    return f"SELECT {columns},{_marks(range(fixed))} FROM (VALUES {_values(rows, width)})"


@lru_cache(maxsize=64)
def _values(rows: int, width: int) -> str:
    """``(?,..,?),(..)``: ``rows`` rows of ``width`` anonymous parameters."""
    return ",".join(["(" + _marks(range(width)) + ")"] * rows)


def _pow2_floor(n: int, cap: int) -> int:
    """The largest power of two <= min(n, cap) (at least 1)."""
    n = max(1, min(n, cap))
    return 1 << (n.bit_length() - 1)


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    """Slices of ``size`` (a power of two), then the rest as falling powers of two.

    Why: SQLite compiles each distinct statement text, and a multi-row VALUES or IN list
    of n rows is a distinct text per n. Slicing by 900 (or 450 accounts) left a remainder
    of a new length in most batches: fresh statements to compile every batch, which also
    pushed others out of the connection's statement cache. Powers of two keep each
    statement to at most ten lengths, compiled once per connection."""
    require(size > 0 and size & (size - 1) == 0, "chunk size must be a power of two")
    done, total = 0, len(items)
    while done < total:
        while size > total - done:
            size //= 2
        yield items[done:done + size]
        done += size


def _marks(chunk: Sequence) -> str:
    return ",".join("?" * len(chunk))
