"""The single-writer lease in Redis. Correctness does not rest on it alone: a writer that
lost the lease is stopped by the fencing epoch in SQLite
(see :mod:`workers.adapters.ledger_store`)."""

from __future__ import annotations

from typing import Final

import redis

from producer import constants as c

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
    def __init__(self, client: redis.Redis, owner: str, lease_ms: int) -> None:
        self._redis = client
        self.owner = owner
        self._lease_ms = lease_ms
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lease if it is free; keep it if it is already ours."""
        taken = self._redis.set(c.KEY_WRITER_LEASE, self.owner, nx=True, px=self._lease_ms)
        return bool(taken) or self.renew()

    def renew(self) -> bool:
        return bool(self._renew(keys=[c.KEY_WRITER_LEASE], args=[self.owner, self._lease_ms]))

    def release(self) -> None:
        self._release(keys=[c.KEY_WRITER_LEASE], args=[self.owner])

    def holder(self) -> str | None:
        value = self._redis.get(c.KEY_WRITER_LEASE)
        return value.decode() if isinstance(value, bytes) else value
