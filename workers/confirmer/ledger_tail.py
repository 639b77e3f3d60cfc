"""The confirmer: publishes every committed outcome from the ledger, in seq order.

SQLite is the source of every confirmation; Redis is only the way it travels. The
confirmer reads the outcomes after the last seq it published (``outcomes_after``),
publishes a round of them in one MULTI (workers/adapters/confirmation_publisher.py) and
records how far it got, in Redis and in a small file beside the ledger. So:
- an outcome committed while no confirmer runs is published when one runs again;
- a confirmer killed mid-round publishes that round again (at-least-once; subscribers
  drop repeats by seq);
- when Redis loses its data (restart without persistence, FLUSHALL), the confirmer finds
  its record there gone, publishes again the recent outcomes the streams held, and goes
  on from its file.
One confirmer publishes at a time (a lease, like the writer's); others stand by.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import threading
import time
from typing import Final

import redis

from producer import constants as c
from producer.backoff import backoff_ms
from producer.errors import BetstreamError, LeaseLost
from workers.adapters.confirmation_publisher import Publisher, read_progress
from workers.adapters.confirmer_progress import load_progress, save_progress
from workers.adapters.ledger_queries import outcome_seq_max, outcomes_after
from workers.adapters.ledger_store import connect
from workers.adapters.redis_lease import Lease, LeaseKeeper
from workers.core.decision import writers_own
from workers.core.intake import ingress_ms
from workers.logs import get_logger
from workers.settings import Settings

LEASE_RENEWALS: Final = 3  # renewals per lease period: two may fail before it is lost
# Faults that wait and retry: Redis away or refusing, the ledger not there yet or locked.
RETRYABLE: Final = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError,
                    sqlite3.OperationalError, BetstreamError)


class Confirmer:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self._s = settings
        self._redis = client
        owner = f"confirmer-{socket.gethostname()}-{os.getpid()}:{random.getrandbits(32):08x}"
        self._lease = LeaseKeeper(Lease(client, owner, settings.confirm_lease_ms,
                                        key=c.KEY_CONFIRMER_LEASE),
                                  settings.confirm_lease_ms // LEASE_RENEWALS)
        self._publisher = Publisher(client, settings)
        self._conn: sqlite3.Connection | None = None
        self.published: int | None = None  # every outcome up to this seq is published
        self._high = 0  # the highest seq ever published here (latency counts only new ones)
        self._saved = (0.0, -1)  # (when, seq) the progress file was last written
        self._beat_at = 0.0
        self._log = get_logger("betstream.confirmer")

    def run(self, stop: threading.Event) -> None:
        """Publish while leading, until ``stop``; faults wait with backoff and retry."""
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    if self._lease.acquire():
                        attempt = 0
                        self._serve(stop)
                    else:
                        stop.wait(self._s.standby_poll_ms / 1000)
                except LeaseLost as exc:
                    self._log.warning("confirmer.lease_lost", error=str(exc))
                except RETRYABLE as exc:
                    attempt += 1
                    self._wait_after(exc, attempt, stop)
        finally:
            self._save_progress(force=True)
            self._lease.release()
            self.close()

    def publish_pending(self) -> int:
        """Publish the outcomes committed since the last round, one round at most; returns
        how many. Our record in Redis gone, or behind what we recorded, means Redis lost
        the streams (or their tail) too: that part is published again first."""
        conn = self._ledger()
        rows, entry_ids = outcomes_after(conn, self.published, self._s.confirm_round_max)
        if not rows and not self._beat_due():
            return 0
        last = rows[-1][6] if rows else self.published
        # (the writer's own settles came in by no stream entry: no ingress to measure from)
        new = [ingress_ms(e) for r, e in zip(rows, entry_ids)
               if r[6] > self._high and not writers_own(e)]
        before = self._publisher.publish_round(rows, new, last)
        self._beat_at = time.monotonic()
        if self._lost_since(before, conn):
            return len(rows)
        self.published, self._high = last, max(self._high, last)
        self._save_progress()
        return len(rows)

    def catch_up(self) -> int:
        """Publish everything committed so far, then return how many were published: one
        pass without the lease (tests, tools). A running confirmer does the same in turns."""
        self._start()
        total = 0
        while count := self.publish_pending():
            total += count
        self._save_progress(force=True)
        return total

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _serve(self, stop: threading.Event) -> None:
        self._start()
        self._log.info("confirmer.leading", published_seq=self.published)
        while not stop.is_set():
            self._lease.keep()
            if self.publish_pending() < self._s.confirm_round_max:
                stop.wait(self._s.confirm_poll_ms / 1000)  # caught up: look again shortly

    def _beat_due(self) -> bool:
        """With nothing to publish, the record in Redis is still rewritten every lease
        renewal period: health reads its age, and a record Redis lost is noticed while
        idle too."""
        return (time.monotonic() - self._beat_at
                >= self._s.confirm_lease_ms / LEASE_RENEWALS / 1000)

    def _start(self) -> None:
        """Where to go on from: our own last seq, else the file, else Redis's record, else
        the recent outcomes (a first start). Then, if Redis lost what we published, from
        further back (``_lost_since``)."""
        recorded = read_progress(self._redis)
        seq = self.published
        if seq is None:
            seq = load_progress(self._s.confirm_progress_path)
        if seq is None and recorded is not None:
            seq = recorded[0]
        if seq is None:
            seq = max(0, outcome_seq_max(self._ledger()) - self._s.confirmations_len_max)
        self.published = seq
        self._lost_since(recorded[0] if recorded is not None else None, self._ledger())

    def _lost_since(self, recorded: int | None, conn: sqlite3.Connection) -> bool:
        """Whether Redis lost what we published, judged by our record there (``recorded``):
        gone (no persistence, FLUSHALL: the recent outcomes again) or behind us (a restart
        that lost its last writes: from there). Rewinds ``published`` if so."""
        if recorded is None and self.published > 0:
            committed = outcome_seq_max(conn)
            self._rewind(max(0, committed - self._s.confirmations_len_max), committed,
                         "redis lost the confirmer's record and its streams")
            return True
        if recorded is not None and recorded < self.published:
            self._rewind(recorded, outcome_seq_max(conn),
                         "redis lost the confirmer's last writes")
            return True
        return False

    def _rewind(self, start: int, committed: int, why: str) -> None:
        start = min(self.published, start)
        if committed > start:
            self._log.warning("confirmer.republishing", reason=why, from_seq=start,
                              through_seq=committed, published_seq=self.published)
        self.published = start

    def _ledger(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._s.db, self._s.sqlite_busy_timeout_ms, readonly=True)
        return self._conn

    def _save_progress(self, force: bool = False) -> None:
        when, seq = self._saved
        now = time.monotonic()
        if self.published is None or seq == self.published or (
                not force and now - when < self._s.confirm_progress_save_ms / 1000):
            return
        try:
            save_progress(self._s.confirm_progress_path, self.published)
        except OSError as exc:  # Redis keeps the record meanwhile
            self._log.warning("confirmer.progress_not_saved", error=str(exc))
        self._saved = (now, self.published)

    def _wait_after(self, exc: Exception, attempt: int, stop: threading.Event) -> None:
        self.close()  # a ledger replaced or restored is opened afresh
        delay = backoff_ms(attempt, self._s.retry_backoff_min_ms, self._s.retry_backoff_max_ms)
        self._log.warning("confirmer.retry", error=str(exc)[:200], attempt=attempt,
                          delay_ms=delay)
        stop.wait(delay / 1000)


def run_confirmer(settings: Settings, client: redis.Redis, stop: threading.Event) -> None:
    Confirmer(settings, client).run(stop)
