"""``betstream health``: is a writer leading, recently alive, and keeping up?"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from producer import constants as c
from workers.adapters.intent_stream import backlog


@dataclass(frozen=True)
class WriterHealth:
    lease_holder: str | None
    writers: dict[str, dict[str, str]]  # consumer -> last beacon fields
    pending: int | None
    lag: int | None
    breaker: str = "closed"  # the shared circuit breaker's state
    breaker_reason: str = ""

    @property
    def ok(self) -> bool:
        """Healthy when some writer holds the lease and one beacon says it is leading
        (a writer retrying a failing step reports ``retrying``)."""
        leading = [w for w in self.writers.values() if w.get("state") == "leading"]
        return self.lease_holder is not None and bool(leading)

    @property
    def degraded(self) -> bool:
        """The breaker sheds load (OPEN, or HALF_OPEN probing after a fault)."""
        return self.breaker != "closed"

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "degraded": self.degraded, "lease_holder": self.lease_holder,
                "writers": self.writers, "pending": self.pending, "lag": self.lag,
                "breaker": self.breaker, "breaker_reason": self.breaker_reason,
                "checked_ms": time.time_ns() // 10**6}


def writer_beacons(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Every writer's last beacon (``HealthBeacon``) not yet expired, by consumer name."""
    writers = {}
    for key in client.scan_iter(match=f"{c.KEY_WRITER_HEALTH}:*", count=100):
        name = key.decode().rsplit(":", 1)[-1]
        writers[name] = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    return writers


def writer_health(client: redis.Redis) -> WriterHealth:
    holder = client.get(c.KEY_WRITER_LEASE)
    writers = writer_beacons(client)
    state = backlog(client)
    breaker = {k.decode(): v.decode() for k, v in client.hgetall(c.KEY_BREAKER).items()}
    return WriterHealth(holder.decode() if holder else None, writers,
                        state[0] if state else None, state[1] if state else None,
                        breaker.get("state", "closed"), breaker.get("reason", ""))
