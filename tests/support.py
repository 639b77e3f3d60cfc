"""Small read helpers for tests: stream progress and ledger contents."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import redis

from producer import constants as c
from producer.contract import intent_body, new_bet, new_deposit
from workers.adapters.intent_stream import backlog
from workers.core.decision import Candidate


def candidate(intent, at_ms: int = 0) -> Candidate:
    """An intent as the writer admits it, entered at ``at_ms`` (entry id ``<at_ms>-0``),
    signed with key "k"."""
    return Candidate.of(f"{at_ms}-0", at_ms, intent, hashlib.sha256(intent_body(intent)).digest(),
                        "k")


def drained(client: redis.Redis) -> bool:
    """Every entry delivered to the writer and acknowledged (committed and confirmed)."""
    return backlog(client) == (0, 0)


def query(db: Path | str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def outcome_of(db: Path | str, intent_id: str) -> dict | None:
    rows = query(db, "SELECT status, reason, balance, seq FROM outcomes WHERE id = ? "
                     "ORDER BY seq", (intent_id,))
    if not rows:
        return None
    status, reason, balance, seq = rows[0]
    return {"status": status, "reason": reason, "balance": balance, "seq": seq}


def balances(db: Path | str) -> dict[int, int]:
    return dict(query(db, "SELECT id, balance FROM users"))


def confirmations(client: redis.Redis) -> list[dict]:
    return [json.loads(f[b"outcome"]) for _, f in client.xrange(c.STREAM_CONFIRMATIONS)]


def deadletters(client: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()}
            for _, f in client.xrange(c.STREAM_DEADLETTER)]


def deliver_confirmations(client: redis.Redis, settings) -> int:  # settings: Settings
    """Run the confirmer in this process until every committed outcome is published."""
    from workers.confirmer.ledger_tail import Confirmer

    confirmer = Confirmer(settings, client)
    try:
        return confirmer.catch_up()
    finally:
        confirmer.close()


def log_events(log_path: str | Path, name: str | None = None) -> list[dict]:
    """A process's JSON log events called ``name`` (all events for None), in order."""
    out = []
    for line in Path(log_path).read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event and name in (None, event["event"]):
            out.append(event)
    return out


def writer_in_process(settings, keyring, name: str):  # -> tuple[Writer, Store]
    """A writer run on a thread of the test (to freeze or fence it precisely)."""
    from workers.adapters.ledger_store import Store
    from workers.writer.batch_writer import Writer
    from workers.writer.hooks import Hook

    client = redis.Redis.from_url(settings.redis_url)
    store = Store(settings.db, settings.sqlite_busy_timeout_ms)
    return Writer(settings, client, store, keyring, Hook(), consumer=name), store


def plain_intents(keyring, n: int) -> list:  # -> list[tuple[Key, bytes]]
    """Valid deposits and bets, each taking the fast path (the usual batch)."""
    cashier, frontend = keyring.get("cashier"), keyring.get("frontend")
    return [(cashier, intent_body(new_deposit(7 + i, 100))) if i % 2 == 0 else
            (frontend, intent_body(new_bet(7 + i, 10, "m1", "home", "1.90"))) for i in range(n)]
