"""A market resulted as a whole while its writer is SIGKILLed mid-settlement, twice: every
bet settles exactly once, with the same postings as single settles, and the audit holds."""

from __future__ import annotations

import signal
from collections import Counter

import redis

from producer.client import Producer
from producer.contract import new_bet, new_deposit, new_settle_market
from tests.conftest import Procs, wait_for
from tests.support import balances, drained, query

USERS = 200
BETS = 20_000
CHUNK = 250  # bets per chunk: 80 chunks, so a kill lands between two of them
KILL_AT = (0.2, 0.55)  # share of the bets settled when the writer is killed
RESULTS = {"home": "won", "draw": "void"}  # away: others (lost)
SELECTIONS = ("home", "draw", "away")


def _settled(db: str) -> int:
    return query(db, "SELECT COUNT(*) FROM bets WHERE market = 'big' AND status != 'open'")[0][0]


def _state(db: str) -> str | None:
    rows = query(db, "SELECT state FROM markets WHERE market = 'big'")
    return rows[0][0] if rows else None


def test_a_market_settled_across_writer_kills_pays_every_bet_once(
        procs: Procs, redis_client: redis.Redis, producer: Producer, env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    writer_env = {"BETSTREAM_LEASE_MS": "1000", "BETSTREAM_SETTLE_CHUNK_BETS_MAX": str(CHUNK)}
    writer = procs.start("writer", **writer_env)
    producer.submit_many([new_deposit(u, 1_000_000) for u in range(1, USERS + 1)])
    bets = [new_bet(1 + i % USERS, 100 + i % 7, "big", SELECTIONS[i % 3], "2.50")
            for i in range(BETS)]
    producer.submit_many(bets)
    wait_for(lambda: drained(redis_client), 120, "the bets to be placed")
    before = balances(db)
    producer.submit(new_settle_market("big", RESULTS))

    killed_settling = 0
    for share in KILL_AT:
        wait_for(lambda: _settled(db) >= share * BETS, 120, f"{share:.0%} of the bets settled",
                 interval_s=0.01)
        settling = _state(db) == "settling"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        killed_settling += settling and _settled(db) < BETS
        writer = procs.start("writer", **writer_env)
    assert killed_settling >= 1, "a kill landed mid-settlement"
    wait_for(lambda: _state(db) == "closed", 120, "the settlement to finish after the kills")

    statuses = dict(query(db, "SELECT id, status FROM bets WHERE market = 'big'"))
    expected = {b.id: RESULTS.get(b.selection, "lost") for b in bets}
    assert statuses == expected, "every bet settled, with its selection's result"
    txns = Counter(ref for (ref,) in query(
        db, "SELECT ref_id FROM transaction_ledger WHERE ref_type = 'settle' GROUP BY txn_id"))
    assert set(txns.values()) == {1} and len(txns) == BETS, "one settlement txn per bet"
    outcomes = query(db, "SELECT COUNT(*), COUNT(DISTINCT id) FROM outcomes WHERE kind = 'settle'")
    assert outcomes == [(BETS, BETS)], "one settle outcome per bet, none twice"
    paid = Counter()
    for bet in bets:
        paid[bet.user_id] += {"won": bet.amount * 250 // 100, "void": bet.amount}.get(
            expected[bet.id], 0)
    after = balances(db)
    assert {u: after[u] - before[u] for u in range(1, USERS + 1)} == {
        u: paid[u] for u in range(1, USERS + 1)}
    assert after[-2] == before[-2] - sum(b.amount for b in bets), "escrow gave every stake"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
