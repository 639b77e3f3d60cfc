"""The producer's pipelined XADDs against a real Redis: ids, errors and the connection.

The producer packs a chunk's XADDs itself and reads every reply (producer/client.py);
these show what a user of ``submit_many`` would notice if that went wrong.
"""

from __future__ import annotations

import pytest
import redis

from producer import constants as c
from producer.client import Producer
from producer.contract import new_bet, new_deposit


def _intents(n: int) -> list:
    return [new_deposit(1 + i, 100) if i % 3 == 0 else new_bet(1 + i, 5, "m1", "home", "2.10")
            for i in range(n)]


def test_each_intent_is_added_once_in_order_and_its_id_returned(
        redis_client: redis.Redis, producer: Producer) -> None:
    """Chunks of pipeline_size_max: every id answered is an entry, in submission order."""
    intents = _intents(2 * producer.pipeline_size_max + 7)
    ids = producer.submit_many(intents)
    entries = redis_client.xrange(c.STREAM_INTENTS)
    assert [e.decode() for e, _ in entries] == ids and len(ids) == len(intents)
    bodies = [fields[b"body"] for _, fields in entries]
    assert [b'"id":"' + i.id.encode() + b'"' in body for i, body in zip(intents, bodies)] \
        == [True] * len(intents)


def test_a_refused_xadd_raises_and_the_connection_stays_in_step(
        redis_client: redis.Redis, producer: Producer) -> None:
    """Redis refuses every XADD of a chunk (the key holds a string): the first error is
    raised after all replies were read, so the next chunk gets its own replies, not
    the rest of the refused chunk's."""
    redis_client.set(c.STREAM_INTENTS, "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        producer.submit_many(_intents(50))
    redis_client.delete(c.STREAM_INTENTS)
    ids = producer.submit_many(_intents(3))
    assert [e.decode() for e, _ in redis_client.xrange(c.STREAM_INTENTS)] == ids
    assert redis_client.ping()
