"""The single batching writer: lead (lease + epoch), then serve batches in stream order.

    lead -> next batch -> decide and commit -> finish (ack + confirm)

Batches come from one source (workers/writer/batch_source.py), are decided and committed
by the pipeline (workers/writer/batch_pipeline.py) and finished here. Faults are expected
and handled: a failing store or Redis is retried with bounded backoff (the batch stays
pending, nothing is dropped), and a writer that finds itself fenced out stops committing
and goes back to standby.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import redis

from producer.backoff import backoff_ms
from producer.contract import now_ms
from producer.errors import FencedOut, InvariantViolation, LeaseLost, StoreError
from producer.signing import Keyring
from workers.adapters.intent_stream import IntentStream
from workers.adapters.ledger_store import Store
from workers.adapters.redis_instance import instance_marker
from workers.adapters.redis_lease import Lease, LeaseKeeper
from workers.adapters.writer_silence import WriterSilence
from workers.settings import Settings
from workers.writer.batch_pipeline import BatchPipeline, Committed, Decided
from workers.writer.batch_source import Batch, BatchSource
from workers.writer.hooks import Hook

T = TypeVar("T")
# Redis answering with an error (OOM, READONLY after a failover, MISCONF, NOGROUP after a
# flush) is retried like an outage: crashing would only restart into the same state.
RETRYABLE = (StoreError, redis.ConnectionError, redis.TimeoutError, redis.ResponseError)


def consumer_name() -> str:
    """Unique per process, readable by operators (host and pid)."""
    return f"writer-{socket.gethostname()}-{os.getpid()}"


class Writer:
    def __init__(self, settings: Settings, client: redis.Redis,
                 store: Store | Callable[[], Store], keyring: Keyring | Callable[[], Keyring],
                 hooks: Hook, consumer: str | None = None) -> None:
        """``store`` may be a factory: a store that cannot be opened yet (read-only, full,
        missing disk) is then retried like a failing commit instead of ending the process.
        ``keyring`` may be a callable asked between batches (reload on SIGHUP)."""
        self._s = settings
        self._open_store = (lambda: store) if isinstance(store, Store) else store
        self._keyring = keyring if callable(keyring) else (lambda: keyring)
        self._hooks = hooks
        self.consumer = consumer or consumer_name()
        self._client = client
        self.stream = IntentStream(client, settings, self.consumer)
        self.lease = Lease(client, f"{self.consumer}:{random.getrandbits(32):08x}",
                           settings.lease_ms)
        self._lease = LeaseKeeper(self.lease, settings.lease_renew_ms)
        self.source = BatchSource(settings, self.stream, self._lease, self._keyring())
        self._store: Store | None = store if isinstance(store, Store) else None
        self.pipeline = (BatchPipeline(settings, self._store, self.stream.server_ms)
                         if self._store else None)
        self.epoch = 0
        self._trimmed_at = 0.0
        self._deferred: Committed | None = None  # committed; finished during the next commit
        self._instance: str | None = None  # the Redis dataset's marker as we last saw it
        self._silence = WriterSilence.from_settings(client, settings,
                                                    f"standby writer {self.consumer}")
        self._silence_checked = float("-inf")  # monotonic s of the last look

    def run(self, stop: threading.Event) -> None:
        """Lead when possible, serve until ``stop`` is set; standby otherwise."""
        self._retry("ensure_group", self.stream.ensure_group, stop)
        if not self._ensure_store(stop):
            return
        try:
            while not stop.is_set():
                self.source.keyring = self._keyring()
                if self._retry("lead", self.try_lead, stop):
                    self._lead(stop)
                else:
                    self._stand_by(stop)
        finally:
            self._lease.release()

    def try_lead(self) -> bool:
        """Take the lease, then a new fencing epoch, and every pending entry as ours."""
        if not self._lease.acquire():
            return False
        self._check_redis_data()
        self.epoch = self._store.bump_epoch()
        self.pipeline.forget()
        claimed = self.stream.claim_all()
        self._hooks.on_lead(self.epoch, claimed)
        return True

    def process(self, batch: Batch, stop: threading.Event) -> None:
        """Decide and commit ``batch``, then ack and confirm it; each step retried until
        it succeeds or we stop. Nothing is acknowledged before its own commit is durable:
        a crash between the two only redelivers the entries (their stored outcomes are
        found and confirmed again as duplicates)."""
        backlogged = self.source.backlogged(batch)
        if not backlogged:
            self._finish_deferred(stop)
        committed = self.commit(batch, stop, backlogged)
        if committed is None:
            return  # stopping: the entries stay pending and are redelivered
        self._finish_deferred(stop)  # nothing overlapped the commit (only repeats)
        if backlogged and self.source.has_ahead:
            self._deferred = committed  # finished while the batch read ahead commits
        else:
            self._finish(committed, stop)

    def commit(self, batch: Batch, stop: threading.Event,
               backlogged: bool = False) -> Committed | None:
        """Decide and durably commit ``batch``; None if stopped first. ``backlogged``: the
        next batch is read ahead while this one commits."""
        if backlogged:
            self.source.prefetch()

        def attempt() -> Committed:
            now = now_ms()
            claims = self.source.claims(batch, now)
            decided = self.pipeline.decide(batch, claims, now, self.epoch)
            if decided.write is None or not self._overlaps(backlogged):
                return decided.confirmations(self.pipeline.commit(decided))
            return self._commit_overlapped(decided, stop)

        return self._retry("commit", attempt, stop, leading=True)

    def close(self) -> None:
        self.source.close()
        if self.pipeline is not None:
            self.pipeline.close()
        if self._store is not None:
            self._store.close()

    def _ensure_store(self, stop: threading.Event) -> bool:
        if self._store is None:
            self._store = self._retry("open_store", self._open_store, stop)
            if self._store is None:
                return False
            self.pipeline = BatchPipeline(self._s, self._store, self.stream.server_ms)
        return True

    def _stand_by(self, stop: threading.Event) -> None:
        """Another writer leads: wait for the lease, and open the breaker if the leader
        has gone silent while intents wait (it may have died without a word)."""
        self._hooks.on_standby(self._lease.holder())
        now = time.monotonic()
        if now - self._silence_checked >= self._s.writer_silence_check_interval_ms / 1000:
            self._silence_checked = now
            self._silence.check(now_ms())
        stop.wait(self._s.standby_poll_ms / 1000)

    def _lead(self, stop: threading.Event) -> None:
        self._silence.forget()  # back on standby later, it watches afresh
        try:
            self._serve(stop)
        except (FencedOut, LeaseLost) as exc:
            # A lease lost because Redis lost its data is reported as that, not as fencing.
            if not (isinstance(exc, LeaseLost) and self._redis_lost_data()):
                self._hooks.on_fenced(exc)
            self.pipeline.forget()
        except InvariantViolation as exc:  # a bug: never retried, never swallowed
            self._hooks.on_invariant_violation(exc)
            raise

    def _serve(self, stop: threading.Event) -> None:
        """Next batch -> decide and commit -> finish, until stopped or fenced out."""
        self.source.restart()
        self._deferred = None  # a batch left over from before is redelivered
        try:
            while not stop.is_set():
                self._between_batches(stop)
                chores = self._retry("chores", self.pipeline.has_chores, stop, leading=True)
                batch = self._retry("read", lambda: self.source.next(wait=not chores), stop,
                                    leading=True)
                if batch is None and chores:
                    batch = Batch([], [], [])  # nothing read: a batch of our own work
                if batch is not None:
                    self.process(batch, stop)
                else:
                    self._hooks.on_idle()
                self._maybe_trim()
        finally:
            self._finish_last()

    def _between_batches(self, stop: threading.Event) -> None:
        # Redis may vanish between two steps (a restart): retried here like any step,
        # or an unhandled ConnectionError would end the writer process.
        self._retry("renew_lease", self._lease.keep, stop, leading=True)
        self.source.keyring = self._keyring()  # SIGHUP reloads
        if not self.source.has_ahead:
            # A deferred batch is finished before anything but the batch read ahead is
            # read: acked, it is not read again with our pending entries.
            self._finish_deferred(stop)

    def _overlaps(self, backlogged: bool) -> bool:
        """A backlogged batch commits on the committer thread when there is work to do
        meanwhile: a batch to read ahead, or the batch before to finish."""
        return backlogged and (not self.source.has_ahead or self._deferred is not None)

    def _commit_overlapped(self, decided: Decided, stop: threading.Event) -> Committed:
        """While SQLite commits (without the GIL), this thread reads the next batch ahead,
        prepares this batch's confirmations, finishes the batch before and collects what
        the admission child read. Returns once the commit is durable."""
        started = self.pipeline.start_commit(decided)
        try:
            self.source.read_ahead()  # first: Redis claims its nonces while we go on
            committed = decided.confirmations()
            self._finish_deferred(stop)
            self.source.collect()
        finally:
            commit_ms = self.pipeline.wait_commit(decided, started)  # its error propagates
        return Committed(committed.finish, replace(committed.report, commit_ms=commit_ms))

    def _finish(self, committed: Committed, stop: threading.Event) -> None:
        self._retry("finish", lambda: self.stream.finish(committed.finish), stop,
                    leading=True)
        self._hooks.on_batch(committed.report)

    def _finish_deferred(self, stop: threading.Event) -> None:
        committed, self._deferred = self._deferred, None
        if committed is not None:
            self._finish(committed, stop)

    def _finish_last(self) -> None:
        """On the way out (stop, fenced, lease lost): one attempt, no retries. Our commit is
        durable, so acking it is right even if we no longer lead; if Redis is away the
        entries stay pending and are confirmed again as duplicates when redelivered."""
        committed, self._deferred = self._deferred, None
        if committed is None:
            return
        try:
            self.stream.finish(committed.finish)
        except RETRYABLE:
            return
        self._hooks.on_batch(committed.report)

    def _maybe_trim(self) -> None:
        """Stream retention, by the leading writer only, at most every trim interval."""
        now = time.monotonic()
        if now - self._trimmed_at < self._s.intents_trim_interval_s:
            return
        self._trimmed_at = now
        try:
            self.stream.trim(self._s.intents_retention_ms, time.time_ns() // 1_000_000)
        except redis.RedisError:
            pass  # retention waits for the next interval; the batch path reports Redis faults

    def _retry(self, what: str, step: Callable[[], T], stop: threading.Event,
               leading: bool = False) -> T | None:
        """Run ``step`` until it succeeds; expected faults wait with backoff and jitter.

        While leading, the lease is renewed between attempts so a long store outage does
        not hand the stream to another writer for no reason (a lost lease raises).
        """
        attempt = 0
        while True:
            try:
                return step()
            except (FencedOut, LeaseLost):
                raise
            except RETRYABLE as exc:
                attempt += 1
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    self._recreate_group()
                delay = backoff_ms(attempt, self._s.retry_backoff_min_ms,
                                   self._s.retry_backoff_max_ms)
                self._hooks.on_retry(what, exc, attempt, delay)
                if stop.wait(delay / 1000):
                    return None
                if leading:
                    self._lease.keep_quietly()

    def _recreate_group(self) -> None:
        try:
            self._check_redis_data()  # a group gone: most likely Redis lost everything
            self.stream.ensure_group()
        except redis.RedisError:
            pass  # the next attempt tries again

    def _check_redis_data(self) -> bool:
        """Whether Redis lost its data since we last looked (its marker is new while the
        ledger has commits); reported to the hooks once. Raises on Redis faults."""
        marker, set_now = instance_marker(self._client)
        known, self._instance = self._instance, marker
        lost = (set_now or (known is not None and marker != known)) and self._store.heads.seq > 0
        if lost:
            self._hooks.on_redis_data_lost(self._store.heads.seq)
        return lost

    def _redis_lost_data(self) -> bool:
        try:
            return self._check_redis_data()
        except redis.RedisError:
            return False  # Redis away: taking the lead again looks once it answers
