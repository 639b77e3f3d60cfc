"""Stream retention: acknowledged intents are trimmed, pending or unread ones never are."""

from __future__ import annotations

import redis

from producer.contract import new_deposit
from tests.conftest import Procs, wait_for
from tests.support import drained, outcome_of


def test_writer_trims_acknowledged_intents_but_keeps_pending_ones(
        procs: Procs, producer, redis_client: redis.Redis, env: dict[str, str]) -> None:
    early = new_deposit(1, 10)
    producer.submit(early)
    # A stuck consumer of the group holds the first entry pending (as a crashed writer
    # would): it must survive retention until some writer has processed it.
    redis_client.xgroup_create("betstream:intents", "betstream:writers", id="0")
    redis_client.xreadgroup("betstream:writers", "crashed", {"betstream:intents": ">"}, count=1)
    producer.submit_many([new_deposit(2, 10) for _ in range(200)])
    wait_for(lambda: redis_client.xlen("betstream:intents") == 201, 5, "the intents")

    writer = procs.start("writer", BETSTREAM_INTENTS_RETENTION_MS="0",
                         BETSTREAM_INTENTS_TRIM_INTERVAL_S="0.2", BETSTREAM_LEASE_MS="60000")
    wait_for(lambda: drained(redis_client), 30, "the writer to process everything")
    assert outcome_of(env["BETSTREAM_DB"], early.id)["status"] == "accepted"
    wait_for(lambda: redis_client.xlen("betstream:intents") <= 1, 10,
             "acknowledged entries to be trimmed")
    writer.kill()
    writer.wait(10)


def test_retention_never_trims_pending_or_unread_entries(redis_client: redis.Redis,
                                                          settings) -> None:
    from workers.adapters.intent_stream import IntentStream

    stream = IntentStream(redis_client, settings, "t")
    stream.ensure_group()
    for ms in range(1000, 1050):  # one entry per millisecond, ids 1000-0 .. 1049-0
        redis_client.xadd("betstream:intents", {"v": "1"}, id=f"{ms}-0")
    stream.trim(retention_ms=0, now_ms=10**13)  # "everything is old"
    assert redis_client.xlen("betstream:intents") == 50, "unread entries are never trimmed"

    read = redis_client.xreadgroup("betstream:writers", "t", {"betstream:intents": ">"},
                                   count=30)[0][1]
    redis_client.xack("betstream:intents", "betstream:writers", *[i for i, _ in read[:20]])
    stream.trim(retention_ms=0, now_ms=10**13)
    assert redis_client.xrange("betstream:intents", count=1)[0][0] == b"1020-0", \
        "acknowledged entries go; the oldest pending one (1020) and all after it stay"

    stream.trim(retention_ms=60_000, now_ms=1010 + 60_000)
    assert redis_client.xlen("betstream:intents") == 30, "retention itself keeps younger ones"


def test_the_unacknowledged_floor_is_the_first_entry_not_yet_delivered(
        redis_client: redis.Redis) -> None:
    """Archival and trimming keep what a writer may still need: entries pending, and those
    not yet delivered. The floor is the oldest of those, not the last entry delivered: a
    writer that was idle for an hour and is about to read new entries must not hold
    archival back by that hour (the archive crash test failed 1 run in 3 this way when
    the writer lingered 50 ms before reading: its cutoff fell before every batch)."""
    from workers.adapters.intent_stream import unacked_floor_ms

    redis_client.xgroup_create("betstream:intents", "betstream:writers", id="0", mkstream=True)
    redis_client.xadd("betstream:intents", {"v": "1"}, id="1000-0")
    redis_client.xreadgroup("betstream:writers", "w", {"betstream:intents": ">"})
    redis_client.xack("betstream:intents", "betstream:writers", "1000-0")
    assert unacked_floor_ms(redis_client) is None, "everything acknowledged"
    redis_client.xadd("betstream:intents", {"v": "1"}, id="3600000-0")  # an hour later
    redis_client.xadd("betstream:intents", {"v": "1"}, id="3600005-0")
    assert unacked_floor_ms(redis_client) == 3_600_000, "the first not delivered"
    redis_client.xreadgroup("betstream:writers", "w", {"betstream:intents": ">"}, count=1)
    assert unacked_floor_ms(redis_client) == 3_600_000, "now pending: still the floor"
    redis_client.xack("betstream:intents", "betstream:writers", "3600000-0")
    assert unacked_floor_ms(redis_client) == 3_600_005
