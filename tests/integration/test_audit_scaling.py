"""The audit's cost grows with the ledger, not with its square: its ledger joins have no
index to use (the writer keeps none on ref_id/txn_id), so they must not be nested loops.
Measured in SQLite VM steps (a progress handler), not seconds: deterministic on a busy
machine. With the old correlated queries, doubling the bets quadrupled the steps and a
24k-row ledger took 13 s to audit (100k intents would have taken many minutes)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Final

import pytest

from producer.contract import new_bet, new_deposit, new_settle
from workers.adapters.ledger_audit import CHECKS, audit
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import build_batch
from workers.core.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch

BETS: Final = 1_500
BATCH: Final = 500
GROWTH_MAX: Final = 3.0  # steps(2n) / steps(n): about 2 if n log n, 4 if quadratic


def _ledger(path: Path, bets: int) -> Path:
    """One player (the worst case for a per-user index) with ``bets`` accepted bets."""
    store = Store(path, 1000, checkpoint_interval_ms=0)
    epoch = store.bump_epoch()
    intents = [new_deposit(1, 10**12)] + [new_bet(1, 7, "m", "s", "2.00") for _ in range(bets)]
    for start in range(0, len(intents), BATCH):
        chunk = intents[start:start + BATCH]
        cands = [Candidate.of(f"1-{start + i}", 1, it, it.id.encode(), "k")
                 for i, it in enumerate(chunk)]
        balances = store.load_balances([*SYSTEM_ACCOUNTS, 1])
        book = Book({**dict.fromkeys(SYSTEM_ACCOUNTS, 0), **balances})
        decisions, _ = decide_batch(cands, book)
        store.commit(build_batch(decisions, store.heads, epoch, 1))
    store.close()
    return path


def _steps(path: Path) -> dict[str, int]:
    """SQLite VM steps (in thousands) each check takes on this ledger; all must pass."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    calls = [0]

    def tick() -> int:
        calls[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    out = {}
    try:
        for check in CHECKS:
            calls[0] = 0
            result = check(conn)
            assert result.ok, result
            out[result.name] = calls[0]
    finally:
        conn.close()
    return out


@pytest.mark.parametrize("name", ["one stake entry per accepted bet",
                                  "every accepted outcome is in the ledger"])
def test_audit_joins_grow_linearly(tmp_path: Path, name: str) -> None:
    small = _steps(_ledger(tmp_path / "small.sqlite3", BETS))
    large = _steps(_ledger(tmp_path / "large.sqlite3", 2 * BETS))
    growth = large[name] / max(1, small[name])
    assert growth < GROWTH_MAX, f"{name}: {growth:.1f}x the work for 2x the bets"


def _settled_ledger(path: Path, bets: int) -> None:
    """One hot user's bets, a quarter of them settled (won, lost, void)."""
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
            decisions, book = decide_batch(cands, book)
            assert {d.status for d in decisions} == {"accepted"}
            store.commit(build_batch(decisions, store.heads, epoch, 1))
    finally:
        store.close()


def _failed(path: Path) -> set[str]:
    return {c.name for c in audit(path) if not c.ok}


def test_the_faster_checks_still_catch_what_they_are_for(tmp_path: Path) -> None:
    path = tmp_path / "small.sqlite3"
    _settled_ledger(path, bets=40)
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
