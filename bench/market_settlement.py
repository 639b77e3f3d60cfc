"""Settling a whole market: one ``settle_market`` against one ``settle`` per bet.

A market's open bets are placed first; then the same number of bets is settled two ways,
in the same run, on the same writer: per bet (what an upstream service had to do before
contract v1.1: one signed intent per bet through the stream) and as one ``settle_market``
(the writer settles the bets in chunks of ``BETSTREAM_SETTLE_CHUNK_BETS_MAX``). The rate is
bets settled per second, from the first intent pushed to the last bet's commit.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from typing import Any, Final

from bench.harness import KEYRING, Env, wait
from bench.throughput import DRAIN_WINDOW
from producer.client import Producer
from producer.contract import new_bet, new_deposit, new_settle, new_settle_market
from producer.signing import Keyring

USERS: Final = 1_000
SELECTIONS: Final = ("home", "draw", "away")
PUSH_CHUNK: Final = 10_000  # intents per submit_many call
DRAIN_TIMEOUT_S: Final = 900.0


def measure(env: Env, bets: int) -> dict[str, Any]:
    env.start("writer", **DRAIN_WINDOW)
    producer = Producer(env.client(), Keyring.from_mapping(KEYRING), shed=False)
    _push(producer, [new_deposit(u, 10**9) for u in range(1, USERS + 1)])
    per_bet = _place(env, producer, "per-bet", bets)
    _place(env, producer, "whole", bets)
    started = time.perf_counter()
    _push(producer, [new_settle(b.user_id, b.id, _result(b.selection)) for b in per_bet])
    wait(lambda: _open(env, "per-bet") == 0, DRAIN_TIMEOUT_S, "the per-bet settles")
    per_bet_s = time.perf_counter() - started
    started = time.perf_counter()
    producer.submit(new_settle_market("whole", {"home": "won", "draw": "void"}, "lost"))
    wait(lambda: _state(env, "whole") == "closed", DRAIN_TIMEOUT_S, "the market settlement",
         interval_s=0.01)
    whole_s = time.perf_counter() - started
    try:
        audit_clean = env.run("audit").returncode == 0
    except subprocess.CalledProcessError:
        audit_clean = False
    return {"bets": bets, "per_bet_s": round(per_bet_s, 2),
            "per_bet_per_s": round(bets / per_bet_s), "market_s": round(whole_s, 2),
            "market_per_s": round(bets / whole_s), "ratio": round(per_bet_s / whole_s, 2),
            "audit_clean": audit_clean}


def _result(selection: str) -> str:
    return {"home": "won", "draw": "void"}.get(selection, "lost")


def _place(env: Env, producer: Producer, market: str, bets: int) -> list:
    placed = [new_bet(1 + i % USERS, 100, market, SELECTIONS[i % 3], "2.50")
              for i in range(bets)]
    _push(producer, placed)
    wait(lambda: _open(env, market) == bets, DRAIN_TIMEOUT_S, f"{bets:,} bets on {market}")
    return placed


def _push(producer: Producer, intents: list) -> None:
    for i in range(0, len(intents), PUSH_CHUNK):
        producer.submit_many(intents[i:i + PUSH_CHUNK])


def _open(env: Env, market: str) -> int:
    try:
        return env.query("SELECT COUNT(*) FROM bets WHERE market = ? AND status = 'open'",
                         (market,))[0][0]
    except sqlite3.Error:  # the ledger is not created yet
        return -1


def _state(env: Env, market: str) -> str | None:
    rows = env.query("SELECT state FROM markets WHERE market = ?", (market,))
    return rows[0][0] if rows else None
