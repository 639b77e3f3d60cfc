"""``betstream audit`` stays fast on a big ledger (found by the full crash storm: the audit
of a 100,000-intent ledger ran for more than ten minutes).

Two checks compared every row against every other: "every accepted outcome is in the
ledger" scanned the whole ledger once per outcome (no index on txn_id), and "one stake
entry per accepted bet" scanned the bettor's whole history once per bet. A hot user with
many bets is the worst case for both."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Final

from producer.contract import new_bet, new_deposit, new_settle
from workers.audit import audit
from workers.batch import build_batch
from workers.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.store import Store

BETS: Final = 20_000  # one user's: quadratic checks take minutes here, linear ones a second
BATCH: Final = 2_000
AUDIT_S_MAX: Final = 30.0


def _ledger_of_one_hot_user(path: Path, bets: int = BETS) -> None:
    store = Store(path, 5_000, checkpoint_interval_ms=0)
    try:
        epoch = store.bump_epoch()
        book = Book({a: 0 for a in SYSTEM_ACCOUNTS})
        intents = [new_deposit(7, bets * 10)]
        for n in range(bets):
            bet = new_bet(7, 5, "m", "s", "2.00")
            intents.append(bet)
            if n % 4 == 0:
                intents.append(new_settle(7, bet.id, ("won", "lost", "void")[n % 3]))
        for start in range(0, len(intents), BATCH):
            cands = [Candidate.of(f"{start + i + 1}-0", 1, intent, intent.id.encode(), "k")
                     for i, intent in enumerate(intents[start:start + BATCH])]
            decisions = decide_batch(cands, book)
            assert {d.status for d in decisions} == {"accepted"}
            store.commit(build_batch(decisions, store.heads, epoch, 1))
    finally:
        store.close()


def test_audit_of_a_big_ledger_takes_seconds_not_minutes(tmp_path: Path) -> None:
    path = tmp_path / "big.sqlite3"
    _ledger_of_one_hot_user(path)
    started = time.monotonic()
    checks = audit(path)
    took_s = time.monotonic() - started
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert took_s < AUDIT_S_MAX, f"audit of {BETS:,} bets took {took_s:.0f}s"


def _failed(path: Path) -> set[str]:
    return {c.name for c in audit(path) if not c.ok}


def test_the_faster_checks_still_catch_what_they_are_for(tmp_path: Path) -> None:
    path = tmp_path / "small.sqlite3"
    _ledger_of_one_hot_user(path, bets=40)
    assert _failed(path) == set()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # an accepted outcome that never reached the ledger
        conn.execute("INSERT INTO outcomes(seq, id, entry_id, kind, user_id, status, body_sha, "
                     "batch_no, committed_at) VALUES (100000, ?, 'x-0', 'deposit', 7, "
                     "'accepted', x'00', 1, 1)", (str(uuid.uuid4()),))
        assert "every accepted outcome is in the ledger" in _failed(path)
        # a bet staked twice (a second balanced stake transaction for the same bet id)
        bet_id, stake = conn.execute("SELECT id, stake FROM bets LIMIT 1").fetchone()
        top = conn.execute("SELECT MAX(entry_id) FROM transaction_ledger").fetchone()[0]
        conn.executemany(
            "INSERT INTO transaction_ledger(entry_id, txn_id, batch_no, user_id, amount, "
            "ref_type, ref_id, created_at) VALUES (?, 'again', 1, ?, ?, 'bet', ?, 1)",
            [(top + 1, 7, -stake, bet_id), (top + 2, -2, stake, bet_id)])
        assert "one stake entry per accepted bet" in _failed(path)
    finally:
        conn.close()
