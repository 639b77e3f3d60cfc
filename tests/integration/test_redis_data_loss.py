"""Redis losing its data is loud: the writer says so (not "fenced out"), counts it, shows it
in health, restores a breaker forced open from its record, and keeps serving."""

from __future__ import annotations

import json
import sqlite3

import redis

from producer import constants as c
from producer.client import Producer, entry_fields
from producer.contract import intent_body, new_deposit
from producer.signing import Keyring
from tests.conftest import Procs, wait_for
from tests.support import log_events, query

FAST = {"BETSTREAM_LEASE_MS": "1500", "BETSTREAM_BREAKER_SYNC_MS": "100"}


def committed_seq(db: str) -> int:
    """0 until the writer has created the ledger."""
    try:
        return query(db, "SELECT COALESCE(MAX(seq), 0) FROM outcomes")[0][0]
    except sqlite3.OperationalError:
        return 0


def test_a_flushall_is_reported_the_breaker_restored_and_the_writer_goes_on(
        procs: Procs, redis_client: redis.Redis, producer: Producer, keyring: Keyring,
        env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    writer = procs.start("writer", **FAST)
    intents = [new_deposit(900 + i, 10) for i in range(20)]
    producer.submit_many(intents)
    wait_for(lambda: committed_seq(db) >= 20, 20, "the deposits to be committed")
    forced = procs.run("breaker", "open", "--reason", "maintenance window", **FAST)
    assert forced.returncode == 0, forced.stderr
    last = committed_seq(db)

    redis_client.flushall()
    lost = wait_for(lambda: log_events(writer.log_path, "redis.data_lost"), 20,
                    "the writer to report the loss")
    assert lost[0]["level"] == "error" and lost[0]["last_committed_seq"] == last
    assert "betstream reconcile" in lost[0]["action"]
    assert not log_events(writer.log_path, "writer.fenced_out"), "not reported as fencing"

    breaker = wait_for(lambda: redis_client.hgetall(c.KEY_BREAKER), 10, "the breaker back")
    assert breaker[b"state"] == b"open" and breaker[b"forced"] in (b"1", b"True", b"true")
    assert b"maintenance window" in breaker[b"reason"]

    after = new_deposit(999, 10)  # XADDed directly: producers shed while it is forced open
    redis_client.xadd(c.STREAM_INTENTS, entry_fields(keyring.get("cashier"),
                                                     intent_body(after)))
    wait_for(lambda: query(db, "SELECT 1 FROM outcomes WHERE id = ?", (after.id,)), 20,
             "the writer to commit after the loss")
    wait_for(lambda: redis_client.hget(c.KEY_STATS, "redis_data_lost"), 10, "the metric")
    assert int(redis_client.hget(c.KEY_STATS, "redis_data_lost")) == 1

    health = json.loads(procs.run("health", "--json", **FAST).stdout)
    beacons = list(health["writers"].values())
    assert [int(b["redis_data_lost_seq"]) for b in beacons] == [last]
