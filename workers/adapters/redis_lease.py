"""Leases in Redis: one writer, and one confirmer, at a time.

Correctness does not rest on the writer's lease alone: a writer that lost it is stopped by
the fencing epoch in SQLite (see :mod:`workers.adapters.ledger_store`).
"""

from __future__ import annotations

import time
from typing import Final

import redis

from producer import constants as c
from producer.errors import LeaseLost

# Renew or release only if we still own the lease (compare-and-set in one script).
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A lease on ``key`` (the writer's unless told otherwise): one holder at a time."""

    def __init__(self, client: redis.Redis, owner: str, lease_ms: int,
                 key: str = c.KEY_WRITER_LEASE) -> None:
        self._redis = client
        self.owner = owner
        self._lease_ms = lease_ms
        self._key = key
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lease if it is free; keep it if it is already ours."""
        taken = self._redis.set(self._key, self.owner, nx=True, px=self._lease_ms)
        return bool(taken) or self.renew()

    def renew(self) -> bool:
        return bool(self._renew(keys=[self._key], args=[self.owner, self._lease_ms]))

    def release(self) -> None:
        self._release(keys=[self._key], args=[self.owner])

    def holder(self) -> str | None:
        value = self._redis.get(self._key)
        return value.decode() if isinstance(value, bytes) else value


class LeaseKeeper:
    """Keeping a lease while leading: renewed at most every ``renew_ms``. Only who reads
    (the stream, the ledger's outcomes) rests on it; the writer's fencing epoch protects
    the ledger, so a renewal Redis cannot answer is not fatal."""

    def __init__(self, lease: Lease, renew_ms: int) -> None:
        self.lease = lease
        self._renew_ms = renew_ms
        self._renewed_at = 0.0

    @property
    def owner(self) -> str:
        return self.lease.owner

    def acquire(self) -> bool:
        if not self.lease.acquire():
            return False
        self._renewed_at = time.monotonic()
        return True

    def keep(self) -> None:
        """Renew if due. Raises LeaseLost if another holder has it now."""
        if time.monotonic() - self._renewed_at < self._renew_ms / 1000:
            return
        if not self.lease.renew():
            raise LeaseLost(f"lease {self.lease.owner} expired or was taken")
        self._renewed_at = time.monotonic()

    def keep_quietly(self) -> None:
        """As ``keep``, but Redis being away is not an error here: the next step that
        needs Redis reports it, and the fencing epoch still protects the ledger."""
        try:
            self.keep()
        except redis.RedisError:
            pass

    def holder(self) -> str | None:
        try:
            return self.lease.holder()
        except redis.RedisError:
            return None  # Redis away: the next attempt to lead retries with backoff

    def release(self) -> None:
        try:
            self.lease.release()
        except redis.RedisError:
            pass  # it expires by itself within lease_ms
