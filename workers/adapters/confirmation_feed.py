"""What a subscriber who resumes (``since=SEQ``) missed: the user's recent confirmations
from the short per-user stream, and whether that stream still covers everything after
``since``. Live confirmations come through the gateway's one upstream subscription
(workers/gateway/fanout.py); seqs already sent are skipped, so the overlap between the two
is not sent twice (at-least-once beyond that)."""

from __future__ import annotations

import json
from collections import deque

import redis.asyncio as aioredis

from producer import constants as c


class SeenSeqs:
    """The last ``size_max`` seqs sent on one connection (bounded memory)."""

    def __init__(self, size_max: int) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()
        self._size_max = size_max

    def first_time(self, seq: int) -> bool:
        if seq in self._set:
            return False
        self._order.append(seq)
        self._set.add(seq)
        if len(self._order) > self._size_max:
            self._set.discard(self._order.popleft())
        return True


async def missed_since(client: aioredis.Redis, user_id: int, since: int) -> list[dict]:
    """Confirmations of ``user_id`` with seq > ``since`` still in the replay window."""
    entries = await client.xrange(c.user_confirmations(user_id))
    found = {}
    for _, fields in entries:
        message = json.loads(fields[b"outcome"])
        if message["seq"] > since:
            found.setdefault(message["seq"], message)
    return [found[s] for s in sorted(found)]


async def history_gap(client: aioredis.Redis, user_id: int, since: int) -> dict | None:
    """``{"gap": true, "since": S, "oldest": T}`` when the kept history may no longer hold
    every confirmation after ``since`` (T: the oldest seq it holds, None if it holds none),
    so the client re-fetches what it needs (``GET /bets/{id}``); None when it does."""
    key = c.user_confirmations(user_id)
    first = await client.xrange(key, count=1)
    if not first:
        # Nothing kept (a quiet user's history expired, or Redis lost it): only a client
        # that has seen nothing yet is sure to miss nothing.
        return {"gap": True, "since": since, "oldest": None} if since > 0 else None
    oldest = json.loads(first[0][1][b"outcome"])["seq"]
    info = await client.xinfo_stream(key)
    trimmed = int(info["entries-added"]) > int(info["length"])  # (Redis 7: both kept)
    if trimmed and since < oldest - 1:
        return {"gap": True, "since": since, "oldest": oldest}
    return None
