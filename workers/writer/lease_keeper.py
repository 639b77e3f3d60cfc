"""Keeping the writer lease while leading: renewed at most every ``lease_renew_ms``.

The lease only decides who reads the stream; the fencing epoch in SQLite protects the
ledger (workers/adapters/ledger_store.py), so a renewal Redis cannot answer is not fatal.
"""

from __future__ import annotations

import time

import redis

from producer.errors import LeaseLost
from workers.adapters.writer_lease import Lease


class LeaseKeeper:
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

    def keep(self, force: bool = False) -> None:
        """Renew if due (or ``force``: after a wait that may have outlived the lease).
        Raises LeaseLost if another writer holds it now."""
        if not force and time.monotonic() - self._renewed_at < self._renew_ms / 1000:
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
