"""Defects found in review, pinned by tests against the real store and pipeline pieces."""

from __future__ import annotations

from pathlib import Path

from producer.contract import new_bet, new_deposit, new_settle
from tests.conftest import Procs
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import build_batch
from workers.core.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch


def _cand(entry: str, intent) -> Candidate:
    return Candidate.of(entry, 1, intent, intent.id.encode(), "k")


def test_a_won_settlement_paying_exactly_the_stake_commits(tmp_path: Path) -> None:
    """stake 1 at odds 1.50 pays floor(1.5) = 1: the house row would be 0 and the schema
    refuses a 0 row, which used to wedge the writer on a retried batch forever."""
    store = Store(tmp_path / "l.sqlite3", 1000, checkpoint_interval_ms=0)
    epoch = store.bump_epoch()
    bet = new_bet(5, 1, "m", "s", "1.50")
    cands = [_cand("1-0", new_deposit(5, 10)), _cand("1-1", bet),
             _cand("1-2", new_settle(5, bet.id, "won"))]
    decisions, _ = decide_batch(cands, Book({a: 0 for a in SYSTEM_ACCOUNTS}))
    assert [d.status for d in decisions] == ["accepted"] * 3
    assert all(amount != 0 for _, amount in decisions[2].postings)
    store.commit(build_batch(decisions, store.heads, epoch, 1))
    assert store.load_balances([5]) == {5: 10}, "10 - 1 staked + 1 paid"


def test_writer_on_a_file_that_is_not_a_database_exits_with_a_clear_message(
        procs: Procs, tmp_path: Path) -> None:
    """It used to retry forever with the breaker open: no retry can mend a wrong file."""
    bogus = tmp_path / "not-a-ledger.sqlite3"
    bogus.write_bytes(b"this is a text file, not a ledger\n" * 200)
    done = procs.run("writer", BETSTREAM_DB=str(bogus), timeout_s=60)
    assert done.returncode == 2
    assert "is not an SQLite database" in done.stderr and "Traceback" not in done.stderr
