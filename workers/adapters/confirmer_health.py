"""Is the confirmer keeping up? Its liveness is its progress: how long the oldest committed
outcome has waited unpublished, read from the ledger and the confirmer's record in Redis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from workers.adapters.confirmation_publisher import read_progress
from workers.adapters.ledger_queries import first_committed_after, outcome_seq_max
from workers.adapters.ledger_store import read_ledger


@dataclass(frozen=True)
class ConfirmerHealth:
    committed_seq: int | None  # None: the ledger could not be read
    published_seq: int | None  # None: no confirmer has recorded any progress in this Redis
    record_age_ms: int | None  # since the confirmer last wrote its record
    waiting_ms: int  # how long the oldest unpublished outcome has waited (0: none waits)
    lag_max_ms: int

    @property
    def ok(self) -> bool:
        return self.committed_seq is not None and self.waiting_ms <= self.lag_max_ms

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "committed_seq": self.committed_seq,
                "published_seq": self.published_seq, "record_age_ms": self.record_age_ms,
                "waiting_ms": self.waiting_ms, "lag_max_ms": self.lag_max_ms}


def confirmer_health(client: redis.Redis, db: Path, busy_timeout_ms: int, lag_max_ms: int,
                     now_ms: int) -> ConfirmerHealth:
    """Raises redis.RedisError if Redis cannot be read."""
    record = read_progress(client)
    published, beat = record if record is not None else (None, None)
    age = now_ms - beat if beat is not None else None
    got = read_ledger(db, busy_timeout_ms, lambda conn: (
        outcome_seq_max(conn), first_committed_after(conn, published or 0)))
    if got is None:
        return ConfirmerHealth(None, published, age, 0, lag_max_ms)
    committed, since = got
    waiting = max(0, now_ms - since) if since is not None else 0
    return ConfirmerHealth(committed, published, age, waiting, lag_max_ms)
