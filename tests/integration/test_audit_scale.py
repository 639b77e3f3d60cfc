"""``betstream audit`` stays usable on a ledger with tens of thousands of bets.

Found by the Redis torture run (issue 8): with 80k intents from 40 users, two audit
checks joined every bet / every outcome against the un-indexed ledger and took minutes
(the run's 120 s timeout hit twice); they now aggregate the ledger once.
"""

from __future__ import annotations

import time
from pathlib import Path

from producer.contract import new_bet, new_deposit
from tests.conftest import Procs
from workers.audit import audit
from workers.batch import build_batch
from workers.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.store import Store

BETS = 20_000
BATCH = 1_000
AUDIT_S_MAX = 30  # the quadratic checks needed minutes here; the fixed ones under a second


def _cand(n: int, intent) -> Candidate:
    return Candidate.of(f"1-{n}", 1, intent, intent.id.encode(), "k")


def test_audit_of_twenty_thousand_bets_by_two_users_takes_seconds(
        tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "ledger.sqlite3"
    store = Store(db, 1000, checkpoint_interval_ms=0)
    epoch = store.bump_epoch()
    book = Book({a: 0 for a in SYSTEM_ACCOUNTS})
    intents = [new_deposit(1, 10**9), new_deposit(2, 10**9),
               *(new_bet(1 + n % 2, 7, "m", "1", "2.00") for n in range(BETS))]
    for start in range(0, len(intents), BATCH):
        cands = [_cand(start + i, x) for i, x in enumerate(intents[start:start + BATCH])]
        decisions = decide_batch(cands, book)
        store.commit(build_batch(decisions, store.heads, epoch, 1))
    store.close()

    started = time.monotonic()
    checks = audit(db)
    took = time.monotonic() - started
    assert all(c.ok for c in checks), checks
    assert took < AUDIT_S_MAX, f"audit took {took:.1f}s"
    assert procs.run("audit", "--db", str(db), timeout_s=AUDIT_S_MAX * 2).returncode == 0
