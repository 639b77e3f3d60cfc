"""Publishing confirmations: each outcome goes to ``betstream:confirmations`` (bounded),
to the user's short stream (for subscribers who reconnect) and on the user's channel
(live), in one MULTI per round, so a round is published whole or not at all.

Redis is the delivery path, never the only copy: the confirmer publishes from the ledger
and republishes when Redis lost its data (workers/confirmer/ledger_tail.py). Delivery is
at-least-once; ``seq`` lets subscribers drop repeats.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import redis

from producer import constants as c
from workers.adapters.metrics_store import Recorder
from workers.core.batch_rows import MESSAGE_FIELDS
from workers.settings import Settings


def add_publishes(pipe: redis.client.Pipeline, rows: Sequence[Sequence[Any]],
                  settings: Settings) -> None:
    """Queue the commands that publish ``rows`` (values in MESSAGE_FIELDS order) on
    ``pipe``; the caller executes it."""
    for row in rows:
        message = dict(zip(MESSAGE_FIELDS, row, strict=True))
        data = json.dumps(message, separators=(",", ":"))
        user = int(message["user_id"])
        pipe.xadd(c.STREAM_CONFIRMATIONS, {"outcome": data},
                  maxlen=settings.confirmations_len_max, approximate=True)
        pipe.xadd(c.user_confirmations(user), {"outcome": data},
                  maxlen=settings.user_confirmations_len_max, approximate=True)
        pipe.expire(c.user_confirmations(user), settings.user_confirmations_ttl_s)
        pipe.publish(c.user_channel(user), data)


def publish_round(client: redis.Redis, settings: Settings, rows: Sequence[Sequence[Any]],
                  ingress_ms: Sequence[int], published_seq: int) -> int | None:
    """Publish one round of outcomes from the ledger and record how far the confirmer got
    (``published_seq``), in one MULTI. Returns the record as it was before the round: None
    when Redis no longer has it (it lost its data, or no confirmer ever ran on it)."""
    pipe = client.pipeline(transaction=True)
    pipe.hget(c.KEY_CONFIRMER_PROGRESS, "published_seq")
    add_publishes(pipe, rows, settings)
    now_ms = time.time_ns() // 1_000_000
    pipe.hset(c.KEY_CONFIRMER_PROGRESS, mapping={"published_seq": published_seq,
                                                 "at_ms": now_ms})
    recorder = Recorder(client, 0)
    recorder.observe_many("ingress_to_confirm_ms", [now_ms - t for t in ingress_ms])
    recorder.count("confirmed", len(rows))
    recorder.write_to(pipe)
    before = pipe.execute()[0]
    return int(before) if before is not None else None


def read_progress(client: redis.Redis) -> tuple[int, int] | None:
    """(published seq, when in ms) as the confirmer last recorded it; None if never (or
    Redis lost it)."""
    got = client.hmget(c.KEY_CONFIRMER_PROGRESS, ["published_seq", "at_ms"])
    if got[0] is None or got[1] is None:
        return None
    return int(got[0]), int(got[1])
