"""Store faults found by the torture tier (tests/torture/test_storage_faults.py), pinned
by small tests against a real writer process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis

from producer.client import Producer
from producer.contract import new_bet, new_deposit, now_ms
from producer.errors import BreakerOpen, StoreError
from tests.conftest import Procs, wait_for
from tests.integration.test_breaker_faults import BREAKER_ENV, start, state, write_lock
from tests.support import drained, outcome_of
from workers.adapters.ledger_audit import audit
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import build_batch
from workers.core.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch

SLOW_LEASE = {"BETSTREAM_LEASE_MS": "4000"}  # the next writer waits in standby meanwhile


def test_a_writer_that_cannot_take_the_epoch_opens_the_breaker(
        procs: Procs, producer: Producer, redis_client: redis.Redis) -> None:
    """A writer (re)started while the ledger is locked (or full, or read-only) cannot take
    the fencing epoch. That is a store fault like a failed commit: the breaker must open
    and shed producers, not let them fill a stream that nobody can commit (it used to stay
    closed, since only failures of the "commit" and "open_store" steps were counted)."""
    db = start(procs, producer, redis_client, **SLOW_LEASE)
    first = procs.started[-1]
    first.kill()
    first.wait(10)
    second = procs.start("writer", **BREAKER_ENV)
    wait_for(lambda: "writer.standby" in Path(second.log_path).read_text(), 20,
             "the new writer to open the ledger and wait for the lease")
    with write_lock(db):  # taken after it opened the file, before it leads
        wait_for(lambda: "cannot take the fencing epoch" in Path(second.log_path).read_text(),
                 20, "the new writer to fail taking the epoch")
        wait_for(lambda: state(redis_client) == "open", 20, "the breaker to open")
        with pytest.raises(BreakerOpen):
            producer.submit(new_bet(1, 1, "m", "s", "2.00"))
    bet = new_bet(1, 1, "m", "s", "2.00")
    wait_for(lambda: state(redis_client) == "closed", 60, "the breaker to close again")
    producer.submit(bet)
    wait_for(lambda: drained(redis_client), 30, "the bet to be committed")
    assert outcome_of(db, bet.id)["status"] == "accepted"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout


class FaultyConn:
    """A real connection whose first statement starting with ``sql`` fails with EIO,
    after running (``durable=True``: the COMMIT that reports failure yet reached the disk,
    as fsync EIO does, see the torture tier) or instead of running."""

    def __init__(self, real: sqlite3.Connection, sql: str, durable: bool) -> None:
        self._real, self._sql, self._durable, self.fired = real, sql, durable, False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if not self.fired and sql.startswith(self._sql):
            self.fired = True
            if self._durable:
                self._real.execute(sql, *args)
            raise sqlite3.OperationalError("disk I/O error")
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def _deposit_batch(store: Store, epoch: int, user_id: int, entry_id: str):
    intent = new_deposit(user_id, 100)
    cand = Candidate.of(entry_id, 1, intent, intent.id.encode(), "cashier")
    book = Book({**dict.fromkeys(SYSTEM_ACCOUNTS, 0), **store.load_balances(SYSTEM_ACCOUNTS),
                 **store.load_balances([user_id])})
    decisions, _ = decide_batch([cand], book)
    return intent, build_batch(decisions, store.heads, epoch, now_ms())


def test_a_commit_reported_failed_but_durable_does_not_wedge_the_store(tmp_path: Path) -> None:
    """The retried batch finds its outcome on disk (a repeat), and the next batch continues
    from the heads on disk; with the heads kept in memory it collided with the batch that
    had landed after all (same batch_no and seq) and failed on every retry."""
    store = Store(tmp_path / "l.sqlite3", 1000, checkpoint_interval_ms=0)
    epoch = store.bump_epoch()
    first, batch = _deposit_batch(store, epoch, 5, "1-0")
    store._conn = FaultyConn(store._conn, "COMMIT", durable=True)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        store.commit(batch)
    assert first.id in store.lookup([first.id], []).by_id, "it landed after all"
    _, batch = _deposit_batch(store, epoch, 5, "1-1")
    store.commit(batch)
    assert store.load_balances([5]) == {5: 200}
    store.close()
    failed = [c for c in audit(tmp_path / "l.sqlite3") if not c.ok]
    assert failed == [], "the ledger holds both batches, chained"


def test_a_read_error_right_after_taking_the_epoch_is_retried_not_fatal(tmp_path: Path) -> None:
    """The writer retries StoreError; a raw sqlite3 error from reading the heads after
    taking the epoch ended the writer process instead."""
    store = Store(tmp_path / "l.sqlite3", 1000, checkpoint_interval_ms=0)
    store._conn = FaultyConn(store._conn, "SELECT COALESCE(MAX(seq)",  # type: ignore[assignment]
                             durable=False)
    with pytest.raises(StoreError):
        store.bump_epoch()
    assert store.bump_epoch() == 2, "the next attempt works on a fresh connection"
    store.close()
