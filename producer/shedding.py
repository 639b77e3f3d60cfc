"""Producer-side view of the shared circuit breaker: cheap, cached, and fail-open-safe.

Producers read the breaker hash at most once per ``cache_ms`` and refuse fast with
:class:`BreakerOpen` (carrying ``retry_after``) while it is OPEN, or for all but a share of
intents while HALF_OPEN. Nothing is sent when refused, so nothing is lost.
"""

from __future__ import annotations

import random
import time
from typing import Final

import redis

from producer import constants as c
from producer.breaker_state import Breaker, BreakerLimits, admits, parse, retry_after_s
from producer.errors import BreakerOpen

CACHE_MS_DEFAULT: Final = 250


class BreakerView:
    def __init__(self, client: redis.Redis, cache_ms: int = CACHE_MS_DEFAULT,
                 rng: random.Random | None = None) -> None:
        self._redis = client
        self._cache_ms = cache_ms
        self._rng = rng or random.Random()
        self._read_at = -1e18
        self._breaker = Breaker()
        self._limits = BreakerLimits()

    def check(self) -> None:
        """Raise :class:`BreakerOpen` if this send should be shed."""
        self._refresh()
        if admits(self._breaker, self._limits, self._rng.random()):
            return
        now = time.time_ns() // 1_000_000
        wait_s = retry_after_s(self._breaker, self._limits, now)
        raise BreakerOpen(f"circuit breaker {self._breaker.state}: {self._breaker.reason}",
                          retry_after=wait_s)

    def _refresh(self) -> None:
        now = time.monotonic() * 1000
        if now - self._read_at < self._cache_ms:
            return
        snap = parse(self._redis.hgetall(c.KEY_BREAKER), BreakerLimits())
        self._read_at = now
        self._breaker, self._limits = snap.breaker, snap.limits
