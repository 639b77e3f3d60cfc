"""The peers betstream is measured against, on the same signed intents from the same stream.

* naive: the seed's ADR-009 writer, one SQLite transaction per bet
  (``UPDATE users SET balance = balance - x WHERE id = ? AND balance >= x`` + ledger + bet),
  WAL and ``synchronous=FULL`` like betstream.
* rq: one RQ job per intent that verifies it, opens the database and commits its own
  transaction, run by RQ's default (forking) Worker or its SimpleWorker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from typing import Any, Final

import redis
from rq import Queue, SimpleWorker, Worker
from rq.serializers import JSONSerializer

from bench.harness import KEYRING, Env, wait
from producer.contract import parse_intent

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS transaction_ledger (entry_id INTEGER PRIMARY KEY, user_id INTEGER,
    amount INTEGER, ref_type TEXT, ref_id TEXT);
CREATE TABLE IF NOT EXISTS bets (id TEXT PRIMARY KEY, user_id INTEGER, stake INTEGER);
"""
SECRETS: Final = {kid: v["secret"].encode() for kid, v in KEYRING.items()}
QUEUE: Final = "bench-rq-per-bet"


def open_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.executescript(SCHEMA)
    return conn


def apply_one(conn: sqlite3.Connection, fields: dict[str, Any]) -> bool:
    """Verify, parse and apply one intent in its own transaction (ADR-009)."""
    body = fields["body"] if isinstance(fields["body"], bytes) else fields["body"].encode()
    expected = hmac.new(SECRETS[fields["kid"]], body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["sig"]):
        return False
    intent = parse_intent(body)
    conn.execute("BEGIN IMMEDIATE")
    if intent.kind == "deposit":
        conn.execute("INSERT INTO users(id, balance) VALUES (?, ?) ON CONFLICT(id) DO UPDATE "
                     "SET balance = balance + excluded.balance", (intent.user_id, intent.amount))
        ok = True
    else:
        cur = conn.execute("UPDATE users SET balance = balance - ? WHERE id = ? AND balance >= ?",
                           (intent.amount, intent.user_id, intent.amount))
        ok = cur.rowcount == 1
        if ok and intent.kind == "bet":
            conn.execute("INSERT INTO bets(id, user_id, stake) VALUES (?, ?, ?)",
                         (intent.id, intent.user_id, intent.amount))
    if ok:
        conn.execute("INSERT INTO transaction_ledger(user_id, amount, ref_type, ref_id) "
                     "VALUES (?, ?, ?, ?)", (intent.user_id, intent.amount, intent.kind, intent.id))
    conn.execute("COMMIT")
    return ok


def naive(env: Env, total: int) -> dict[str, float]:
    """Drain the stream with one transaction per intent."""
    client = env.client()
    client.xgroup_create("betstream:intents", "naive", id="0")
    conn = open_db(str(env.dir / "naive.sqlite3"))
    done, started = 0, time.perf_counter()
    while done < total:
        reply = client.xreadgroup("naive", "n1", {"betstream:intents": ">"}, count=500, block=100)
        for _, entries in reply or []:
            for entry_id, raw in entries:
                apply_one(conn, {k.decode(): v if k == b"body" else v.decode()
                                 for k, v in raw.items()})
                client.xack("betstream:intents", "naive", entry_id)
                done += 1
    seconds = time.perf_counter() - started
    return {"intents": done, "seconds": round(seconds, 2), "per_s": round(done / seconds)}


def rq_job(fields: dict[str, str], db: str) -> bool:
    """The RQ job: open the database, apply one intent, close."""
    conn = open_db(db)
    try:
        return apply_one(conn, fields)
    finally:
        conn.close()


def rq_per_bet(env: Env, total: int, worker_class: type[Worker]) -> dict[str, float]:
    """Enqueue one job per intent, then time one worker draining them."""
    client = redis.Redis.from_url(env.redis_url)
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    db = str(env.dir / f"rq-{worker_class.__name__}.sqlite3")
    open_db(db).close()
    entries = client.xrange("betstream:intents", count=total)
    with client.pipeline(transaction=False) as pipe:
        for _, raw in entries:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            queue.enqueue_call("bench.peers.rq_job", args=(fields, db), pipeline=pipe,
                               result_ttl=0)
        pipe.execute()
    worker = worker_class([queue], connection=client, serializer=JSONSerializer)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    seconds = time.perf_counter() - started
    wait(lambda: queue.count == 0, 10, "the RQ queue to empty")
    return {"intents": len(entries), "seconds": round(seconds, 2),
            "per_s": round(len(entries) / seconds)}


def rq_default(env: Env, total: int) -> dict[str, float]:
    return rq_per_bet(env, total, Worker)


def rq_simple(env: Env, total: int) -> dict[str, float]:
    return rq_per_bet(env, total, SimpleWorker)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result)
