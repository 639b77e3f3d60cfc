"""The audit's cost grows with the ledger, not with its square: its ledger joins have no
index to use (the writer keeps none on ref_id/txn_id), so they must not be nested loops.
Measured in SQLite VM steps (a progress handler), not seconds: deterministic on a busy
machine. With the old correlated queries, doubling the bets quadrupled the steps and a
24k-row ledger took 13 s to audit (100k intents would have taken many minutes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import pytest

from producer.contract import new_bet, new_deposit
from workers.audit import CHECKS
from workers.batch import build_batch
from workers.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.store import Store

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
        store.commit(build_batch(decide_batch(cands, book), store.heads, epoch, 1))
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
