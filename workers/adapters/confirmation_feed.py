"""One subscriber's confirmations over a WebSocket: missed ones first, then live ones.

Subscribe to the user's channel *before* reading the user's recent-confirmations stream,
so nothing committed in between is missed; seqs already sent are skipped, so the overlap
is not sent twice (at-least-once beyond that, e.g. a job retried after a crash).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable

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


async def subscribe(client: aioredis.Redis, user_id: int) -> aioredis.client.PubSub:
    """Subscribe before the WebSocket handshake completes: once a client is connected,
    nothing published for it can slip past."""
    pubsub = client.pubsub()
    await pubsub.subscribe(c.user_channel(user_id))
    return pubsub


async def stream_confirmations(client: aioredis.Redis, pubsub: aioredis.client.PubSub,
                               user_id: int, since: int | None,
                               send: Callable[[dict], Awaitable[None]], seen_max: int) -> None:
    """Send missed (if ``since`` is given) then live confirmations until cancelled."""
    seen = SeenSeqs(seen_max)
    try:
        if since is not None:
            for message in await missed_since(client, user_id, since):
                if seen.first_time(message["seq"]):
                    await send(message)
        async for raw in pubsub.listen():
            if raw["type"] != "message":
                continue
            message = json.loads(raw["data"])
            if message.get("user_id") == user_id and seen.first_time(message["seq"]):
                await send(message)
    finally:
        await pubsub.aclose()
