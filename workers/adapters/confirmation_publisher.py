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
from typing import Any, Final

import redis

from producer import constants as c
from workers.adapters.metrics_store import Recorder
from workers.core.batch_rows import MESSAGE_FIELDS
from workers.settings import Settings

USER_FIELD: Final = MESSAGE_FIELDS.index("user_id")


# Every outcome in one script call: packing four commands per outcome in Python cost the
# confirmer most of its CPU. KEYS[1] confirmations stream, KEYS[1+i] outcome i's user
# stream; ARGV[1..3] stream bound, user stream bound, user TTL; ARGV[3+i] outcome i as
# JSON, ARGV[3+n+i] its user's channel.
_PUBLISH: Final = """
local n = #KEYS - 1
for i = 1, n do
  local data = ARGV[3 + i]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'outcome', data)
  redis.call('XADD', KEYS[1 + i], 'MAXLEN', '~', ARGV[2], '*', 'outcome', data)
  redis.call('EXPIRE', KEYS[1 + i], ARGV[3])
  redis.call('PUBLISH', ARGV[3 + n + i], data)
end
return n
"""


class Publisher:
    """Publishes outcomes (rows in MESSAGE_FIELDS order): the confirmer's rounds from the
    ledger, and the writer's answers to re-sent intents."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._s = settings
        self._script = client.register_script(_PUBLISH)

    def add(self, pipe: redis.client.Pipeline, rows: Sequence[Sequence[Any]]) -> None:
        """Queue the publishing of ``rows`` on ``pipe`` (nothing when there are none);
        the caller executes it."""
        if not rows:
            return
        s, users = self._s, [int(row[USER_FIELD]) for row in rows]
        datas = [json.dumps(_message(row), separators=(",", ":")) for row in rows]
        self._script(keys=[c.STREAM_CONFIRMATIONS, *map(c.user_confirmations, users)],
                     args=[s.confirmations_len_max, s.user_confirmations_len_max,
                           s.user_confirmations_ttl_s, *datas, *map(c.user_channel, users)],
                     client=pipe)

    def publish_round(self, rows: Sequence[Sequence[Any]], ingress_ms: Sequence[int],
                      published_seq: int) -> int | None:
        """Publish one round from the ledger and record how far the confirmer got
        (``published_seq``), in one MULTI. Returns the record as it was before the round:
        None when Redis no longer has it (it lost its data, or no confirmer ever ran on
        it)."""
        now_ms = time.time_ns() // 1_000_000
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(c.KEY_CONFIRMER_PROGRESS, "published_seq")
        self.add(pipe, rows)
        pipe.hset(c.KEY_CONFIRMER_PROGRESS, mapping={"published_seq": published_seq,
                                                     "at_ms": now_ms})
        recorder = Recorder(self._redis, 0)
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


def _message(row: Sequence[Any]) -> dict[str, Any]:
    """A confirmation: MESSAGE_FIELDS, and a settle's bet_id, result and payout when the
    row carries them (one more element)."""
    message = dict(zip(MESSAGE_FIELDS, row[:len(MESSAGE_FIELDS)], strict=True))
    if len(row) > len(MESSAGE_FIELDS):
        message.update(row[len(MESSAGE_FIELDS)])
    return message
