"""One upstream subscription per gateway process, fanned out to its WebSockets in memory.

The gateway pattern-subscribes once to every user's channel and hands each confirmation to
the sockets of its user. A socket costs a small queue and no Redis connection, so one
gateway holds tens of thousands. Every bound is a setting: sockets per user
(``ws_per_user_max``), sockets in all (``ws_connections_max``) and confirmations waiting
per socket (``ws_send_queue_max``: a subscriber that does not read is disconnected, so
memory stays bounded).

When the upstream subscription drops (Redis restarted), it is made again with backoff,
and each subscriber is sent what it missed meanwhile from its user's recent stream.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import redis
import redis.asyncio as aioredis

from producer import constants as c
from producer.backoff import backoff_ms
from workers.logs import get_logger
from workers.settings import Settings

PATTERN: Final = f"{c.CHANNEL_USER_PREFIX}*"
UPSTREAM_WAIT_S: Final = 1.0  # longest wait for a message before looking at the stop flag


SEQ_FIELD: Final = '"seq":'


def seq_of(raw: str) -> int:
    """A confirmation's seq, read without parsing the whole message (the confirmer writes
    compact JSON; anything else is parsed)."""
    at = raw.find(SEQ_FIELD)
    end = raw.find(",", at) if at >= 0 else -1
    if at >= 0 and end > at:
        digits = raw[at + len(SEQ_FIELD):end]
        if digits.isdigit():
            return int(digits)
    return int(json.loads(raw)["seq"])


class Refused(Exception):
    """A new subscriber over a cap; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class Subscriber:
    """One WebSocket's confirmations waiting to be sent (raw JSON, with their seq)."""

    def __init__(self, user_id: int, queue_max: int) -> None:
        self.user_id = user_id
        self._queue: deque[tuple[int, str]] = deque()
        self._queue_max = queue_max
        self._ready = asyncio.Event()
        self.overflow = asyncio.Event()  # set once it fell ``queue_max`` behind
        self.last_seq = 0  # the highest seq handed to the socket

    @property
    def overflowed(self) -> bool:
        return self.overflow.is_set()

    def offer(self, seq: int, raw: str) -> None:
        if self.overflowed:
            return
        if len(self._queue) >= self._queue_max:
            self.overflow.set()  # the socket is closed; what waits is dropped
            self._queue.clear()
        else:
            self._queue.append((seq, raw))
        self._ready.set()

    async def next(self) -> tuple[int, str] | None:
        """The next confirmation; None once the subscriber fell too far behind."""
        while not self._queue and not self.overflowed:
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            return None
        seq, raw = self._queue.popleft()
        self.last_seq = max(self.last_seq, seq)
        return seq, raw


Missed = Callable[[int, int], Awaitable[list[dict]]]  # (user, since) -> messages


class FanOut:
    def __init__(self, settings: Settings, client: aioredis.Redis, missed: Missed) -> None:
        self._s = settings
        self._redis = client
        self._missed = missed
        self._by_user: dict[int, set[Subscriber]] = {}
        self.count = 0
        self.connected = False
        self._log = get_logger("betstream.gateway")

    def join(self, user_id: int) -> Subscriber:
        """A new subscriber, or Refused (429: the user holds too many; 503: the gateway)."""
        mine = self._by_user.get(user_id, set())
        if len(mine) >= self._s.ws_per_user_max:
            raise Refused(429, f"at most {self._s.ws_per_user_max} connections per user")
        if self.count >= self._s.ws_connections_max:
            raise Refused(503, "this gateway is at its connection limit")
        sub = Subscriber(user_id, self._s.ws_send_queue_max)
        self._by_user.setdefault(user_id, set()).add(sub)
        self.count += 1
        return sub

    def leave(self, sub: Subscriber) -> None:
        mine = self._by_user.get(sub.user_id)
        if mine is None or sub not in mine:
            return
        mine.discard(sub)
        self.count -= 1
        if not mine:
            del self._by_user[sub.user_id]

    def deliver(self, user_id: int, raw: str) -> None:
        """Hand one confirmation to every socket of its user."""
        subs = self._by_user.get(user_id)
        if not subs:
            return
        seq = seq_of(raw)
        for sub in subs:
            sub.offer(seq, raw)

    async def run(self) -> None:
        """The upstream subscription, made again whenever it drops, until cancelled."""
        attempt = 0
        while True:
            try:
                await self._listen()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.connected = False
                attempt += 1
                delay = backoff_ms(attempt, self._s.retry_backoff_min_ms,
                                   self._s.retry_backoff_max_ms)
                self._log.warning("gateway.upstream_lost", error=str(exc)[:200],
                                  retry_in_ms=delay)
                await asyncio.sleep(delay / 1000)
            else:
                attempt = 0

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.psubscribe(PATTERN)
            if not self.connected:
                await self._catch_up()  # what was published while we were not listening
            self.connected = True
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=UPSTREAM_WAIT_S)
                if message is not None and message["type"] == "pmessage":
                    self._deliver_raw(message["channel"], message["data"])
        finally:
            await pubsub.aclose()

    def _deliver_raw(self, channel: bytes, data: bytes) -> None:
        try:
            user_id = int(channel[len(c.CHANNEL_USER_PREFIX):])
        except ValueError:
            return  # not a user channel of ours
        self.deliver(user_id, data.decode())

    async def _catch_up(self) -> None:
        for user_id, subs in list(self._by_user.items()):
            since = min((s.last_seq for s in subs), default=0)
            for message in await self._missed(user_id, since):
                self.deliver(user_id, json.dumps(message, separators=(",", ":")))
