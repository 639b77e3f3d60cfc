"""The single batching writer: lead (lease + epoch), recover pending entries, then serve.

Faults are expected and handled: a failing store or Redis is retried with bounded backoff
(the batch stays pending, nothing is dropped), and a writer that finds itself fenced out
stops committing and goes back to standby.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias, TypeVar

import redis

from producer.backoff import backoff_ms
from producer.errors import FencedOut, InvariantViolation, LeaseLost, StoreError
from producer.signing import Keyring
from workers.adapters.intent_stream import Entry, IntentStream
from workers.adapters.ledger_store import Store
from workers.settings import Settings
from workers.writer.admission_child import Admitter
from workers.writer.batch_pipeline import Admitted, BatchPipeline, Committed, EarlyClaims
from workers.writer.hooks import Hook

T = TypeVar("T")
# Redis answering with an error (OOM, READONLY after a failover, MISCONF, NOGROUP after a
# flush) is retried like an outage: crashing would only restart into the same state.
RETRYABLE = (StoreError, redis.ConnectionError, redis.TimeoutError, redis.ResponseError)


def consumer_name() -> str:
    """Unique per process, readable by operators (host and pid)."""
    return f"writer-{socket.gethostname()}-{os.getpid()}"


def reads_ahead(read_n: int, settings: Settings) -> bool:
    """Whether a batch of ``read_n`` new entries overlaps its commit with reading and
    admitting the next one: only under a backlog. Under light load it would only split the
    flow into more, smaller batches, one confirmation job each, and the confirmer's per-job
    cost then delayed confirmations (measured at 3,000/s: p50 233 -> 1,477 ms with
    read-ahead on every batch). Not only a full batch, though: a stream fed about as fast
    as the writer commits seldom leaves one waiting, and each batch then ran in turn."""
    size_min = min(settings.read_ahead_size_min, settings.batch_size_max)
    return settings.commit_overlap and read_n >= size_min


# A batch read (and admitted, its nonces claimed) ahead, while the one before committed.
Ahead: TypeAlias = "tuple[list[Entry], Admitted, EarlyClaims | None]"
# The next batch to process: admitted and claimed already when it was read ahead.
Batch: TypeAlias = "tuple[list[Entry] | None, Admitted | None, EarlyClaims | None]"

class Writer:
    def __init__(self, settings: Settings, client: redis.Redis,
                 store: Store | Callable[[], Store], keyring: Keyring | Callable[[], Keyring],
                 hooks: Hook, consumer: str | None = None) -> None:
        """``store`` may be a factory: a store that cannot be opened yet (read-only, full,
        missing disk) is then retried like a failing commit instead of ending the process.
        ``keyring`` may be a callable asked between batches (reload on SIGHUP)."""
        from workers.adapters.writer_lease import (
            Lease,  # local: keeps the import graph of tests small
        )

        self._s = settings
        self._open_store = (lambda: store) if isinstance(store, Store) else store
        self._keyring = keyring if callable(keyring) else (lambda: keyring)
        self._hooks = hooks
        self.consumer = consumer or consumer_name()
        self.stream = IntentStream(client, settings, self.consumer)
        self.lease = Lease(client, f"{self.consumer}:{random.getrandbits(32):08x}",
                           settings.lease_ms)
        self._store: Store | None = store if isinstance(store, Store) else None
        self.pipeline = (BatchPipeline(settings, self._store, self.stream, self._keyring())
                         if self._store else None)
        self.epoch = 0
        self._renewed_at = 0.0
        self._trimmed_at = 0.0
        self._reclaimed_at = time.monotonic()
        self._ahead: Ahead | None = None
        self._unfinished: Committed | None = None  # committed; acked during the next commit
        self._confirm_jobs_waiting = 0  # as of our last finish
        self._last_read_full = False  # the last batch read was a full one (a backlog)
        # A read of new entries failed (Redis, or the admission child): it may have run and
        # its reply been lost, leaving entries pending under us that later reads would pass.
        self._read_failed = False
        self.admitter = Admitter(settings, self.consumer) if settings.admission_process else None

    def _ensure_store(self, stop: threading.Event) -> bool:
        if self._store is None:
            self._store = self._retry("open_store", self._open_store, stop)
            if self._store is None:
                return False
            self.pipeline = BatchPipeline(self._s, self._store, self.stream, self._keyring())
        return True

    def run(self, stop: threading.Event) -> None:
        """Lead when possible, serve until ``stop`` is set; standby otherwise."""
        self._retry("ensure_group", self.stream.ensure_group, stop)
        if not self._ensure_store(stop):
            return
        try:
            while not stop.is_set():
                self.pipeline.keyring = self._keyring()
                if not self._retry("lead", self._try_lead, stop):
                    self._hooks.on_standby(self._holder())
                    stop.wait(self._s.standby_poll_ms / 1000)
                    continue
                try:
                    self._serve(stop)
                except (FencedOut, LeaseLost) as exc:
                    self._hooks.on_fenced(exc)
                    self.pipeline.forget()
                except InvariantViolation as exc:  # a bug: never retried, never swallowed
                    self._hooks.on_invariant_violation(exc)
                    raise
        finally:
            self._release()

    def _try_lead(self) -> bool:
        if not self.lease.acquire():
            return False
        self._renewed_at = time.monotonic()
        self.epoch = self._store.bump_epoch()
        self.pipeline.forget()
        claimed = self.stream.claim_all()
        self._hooks.on_lead(self.epoch, claimed)
        return True

    def _serve(self, stop: threading.Event) -> None:
        after = "0"  # first our own pending entries (redeliveries), in stream order
        self._ahead = self._unfinished = None  # a batch left over from before is redelivered
        if self.admitter is not None and self.admitter.asked:
            # Dropped too: its entries are pending, read again below.
            self.admitter.collect(self._renew_quietly)
        try:
            self._serve_batches(stop, after)
        finally:
            self._finish_last()

    def _serve_batches(self, stop: threading.Event, after: str | None) -> None:
        while not stop.is_set():
            # Redis may vanish between two steps (a restart): retried here like any step,
            # or an unhandled ConnectionError would end the writer process.
            self._retry("renew_lease", self._keep_lease, stop, leading=True)
            self.pipeline.keyring = self._keyring()  # between batches: SIGHUP reloads
            if self._ahead is None and self.admitter is not None and self.admitter.asked:
                self._collect_ahead()  # asked, then interrupted: never leave it waiting
            after = self._after_failed_read(stop, after)
            batch, after = self._next_batch(stop, after)
            if batch is None:
                continue
            entries, admitted, early = batch
            if after is None and self._reclaim_due():  # idle or not: a busy stream must
                after = "0"  # not starve entries stranded by a fenced-out writer: ours now
            self._last_read_full = bool(entries) and len(entries) >= self._s.batch_size_max
            if entries:
                self.process(entries, stop, admitted, read_ahead=self._backlogged(entries, after),
                             early=early)
            else:
                self._finish_unfinished(stop)
                self._hooks.on_idle()
            self._maybe_trim()


    def _after_failed_read(self, stop: threading.Event, after: str | None) -> str | None:
        """After a failed read, ours first, in stream order, before anything newer."""
        if not self._read_failed:
            return after
        self._read_failed = False
        self._finish_unfinished(stop)  # acked, so not read again below
        # A batch read ahead since (a commit retried after the failed read ahead reads
        # again) is newer: dropped, it is pending and read below in order.
        self._ahead = None
        return "0"

    def _next_batch(self, stop: threading.Event, after: str | None
                    ) -> tuple[Batch | None, str | None]:
        """The next batch (entries, admitted, early claims) and the cursor of our pending
        entries (None once they are all read); no batch: go round again."""
        if self._ahead is not None:  # read (and admitted) while the last batch committed
            batch, self._ahead = self._ahead, None
            return batch, after
        if after is not None:
            entries = self._retry("read_pending", lambda: self.stream.read_pending(after),
                                  stop, leading=True)
            if not entries:
                return None, None
            return (entries, None, None), entries[-1][0]
        self._linger(stop)
        entries = self._retry("read_new", self._read_new, stop, leading=True)
        if self._read_failed:  # then what it read is pending under us too: read above
            return None, after
        return (entries, None, None), after
    def process(self, entries: Sequence[Entry], stop: threading.Event,
                admitted: Admitted | None = None, read_ahead: bool = False,
                early: EarlyClaims | None = None) -> None:
        """Commit, then ack and confirm; each step retried until it succeeds or we stop.

        With ``read_ahead``, the next entries are read and admitted (by the admission child,
        which also claims their nonces, from before this batch is decided; once it has
        answered, it starts on the batch after that), and while this batch's SQLite work
        runs on the committer thread (without the GIL) the batch before is acknowledged
        and confirmed. Without the child, the next batch is read in process and its
        nonces claimed on an I/O thread (``early``).
        Nothing is acknowledged before its own commit is durable; entries read ahead stay
        pending until theirs, and a crash meanwhile only redelivers them (their outcomes
        are found, confirmed again as duplicates).
        """
        if not read_ahead:
            self._finish_unfinished(stop)
        elif self._ahead is None:
            # The admission child reads and admits the next batch while this one is decided,
            # not only while it commits: asked only then, the writer's thread waited ~30 %
            # of a drain for it. Still one request in flight, collected after this batch's commit.
            self._ask_ahead()

        def meanwhile(prepare: Callable[[], None]) -> None:
            asked = self._ahead is None and self._ask_ahead()
            if self._ahead is None and not asked:
                self._read_ahead()  # first: Redis claims its nonces while we finish
            prepare()  # this batch's confirmations, while the child reads
            self._finish_unfinished(stop)
            if asked:
                self._collect_ahead()
                if self._ahead is not None:  # the batch after it, while this one commits:
                    self._ask_ahead()  # waiting for the child was 15 % of this thread's time

        def run() -> Committed:
            overlap = read_ahead and (self._ahead is None or self._unfinished is not None)
            return self.pipeline.run(entries, self.epoch, admitted,
                                     meanwhile if overlap else None, early)

        committed = self._retry("commit", run, stop, leading=True)
        if committed is None:
            return  # stopping: the entries stay pending and are redelivered
        self._finish_unfinished(stop)  # meanwhile never ran: nothing to commit (repeats)
        if read_ahead and self._ahead is not None:
            self._unfinished = committed  # finished while the next batch commits
        else:
            self._finish(committed, stop)

    def _finish(self, committed: Committed, stop: threading.Event) -> None:
        waiting = self._retry("finish", lambda: self.stream.finish(committed.finish), stop,
                              leading=True)
        self._confirm_jobs_waiting = waiting or 0
        self._hooks.on_batch(committed.report)

    def _linger(self, stop: threading.Event) -> None:
        """Before reading a batch that is not waiting in full: if the confirmer is behind,
        wait a moment so that the batch, and its confirmation job, is bigger. Each batch is
        one RQ job, whose per-job cost caps the confirmer (~40-100 jobs/s here); a faster
        writer made smaller batches and queued confirmations for seconds at 3,000/s. A
        full batch (a backlog) never waits."""
        if (not self._last_read_full
                and self._confirm_jobs_waiting >= self._s.confirm_jobs_waiting_max):
            stop.wait(self._s.confirm_linger_ms / 1000)
            # Frozen during that wait past the lease (SIGSTOP, a paused VM), we must not
            # read: the entries would land in our pending list after the new leader
            # claimed everything, and be decided late, out of order (found by the
            # split-brain torture test). So the lease is checked again before the read.
            self._retry("renew_lease", lambda: self._keep_lease(force=True), stop,
                        leading=True)

    def _finish_unfinished(self, stop: threading.Event) -> None:
        """Ack and confirm the committed batch whose finish was deferred, if any."""
        committed, self._unfinished = self._unfinished, None
        if committed is not None:
            self._finish(committed, stop)

    def _finish_last(self) -> None:
        """On the way out (stop, fenced, lease lost): one attempt, no retries. Our commit is
        durable, so acking it is right even if we no longer lead; if Redis is away the
        entries stay pending and are confirmed again as duplicates when redelivered."""
        committed, self._unfinished = self._unfinished, None
        if committed is None:
            return
        try:
            self.stream.finish(committed.finish)
        except RETRYABLE:
            return
        self._hooks.on_batch(committed.report)

    def _backlogged(self, entries: Sequence[Entry], after: str | None) -> bool:
        """New entries (not our pending ones, re-read in order) under a backlog."""
        return after is None and reads_ahead(len(entries), self._s)

    def _read_new(self) -> list[Entry]:
        try:
            return self.stream.read_new(self.lease.owner)
        except RETRYABLE:
            self._read_failed = True
            raise

    def _read_ahead(self) -> None:
        """The next batch, without waiting for one: an idle stream must not delay this one."""
        try:
            entries = self.stream.read_new_now(self.lease.owner)
        except redis.RedisError:
            self._read_failed = True  # the next loop reads our pending entries first
            return
        if entries:
            admitted = self.pipeline.admit(entries)
            self._ahead = (entries, admitted, self.pipeline.claim_early(admitted))

    def _ask_ahead(self) -> bool:
        return (self.admitter is not None
                and self.admitter.ask(self.pipeline.keyring, self.lease.owner))

    def _collect_ahead(self) -> None:
        """The batch the admission child read ahead. If it (or Redis) failed the read, what
        it read, if anything, is pending under us: the next loop reads that first."""
        got = self.admitter.collect(self._renew_quietly)  # the lease outlives a slow child
        if got is None:  # what the child read, if anything, is pending under us
            self._read_failed = True
            return
        if got.entries:
            admitted = (got.candidates, got.dead)
            early = got.claims if got.claims is not None else self.pipeline.claim_early(admitted)
            self._ahead = (got.entries, admitted, early)

    def _reclaim_due(self) -> bool:
        """Every lease period, take over entries another consumer has left idle that long.

        A writer that lost the lead while a read was in flight may still pull entries into
        its own pending list after we claimed everything on taking over; they would wait
        for the next change of leader. Checked whether or not the stream is idle: under
        sustained load they would otherwise wait until the load stops (and turn stale).
        """
        now = time.monotonic()
        if now - self._reclaimed_at < self._s.lease_ms / 1000:
            return False
        self._reclaimed_at = now
        try:
            return self.stream.claim_all(min_idle_ms=self._s.lease_ms) > 0
        except redis.RedisError:
            return False

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

    def _keep_lease(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._renewed_at < self._s.lease_renew_ms / 1000:
            return
        if not self.lease.renew():
            raise LeaseLost(f"lease {self.lease.owner} expired or was taken")
        self._renewed_at = time.monotonic()

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
                    self._renew_quietly()

    def _recreate_group(self) -> None:
        try:
            self.stream.ensure_group()
        except redis.RedisError:
            pass  # the next attempt tries again

    def _renew_quietly(self) -> None:
        try:
            self._keep_lease()
        except redis.RedisError:
            pass  # Redis is away; the fencing epoch still protects the ledger

    def _holder(self) -> str | None:
        try:
            return self.lease.holder()
        except redis.RedisError:
            return None  # Redis away: the next attempt to lead retries with backoff

    def close(self) -> None:
        if self.admitter is not None:
            self.admitter.close()
        if self.pipeline is not None:
            self.pipeline.close()
        if self._store is not None:
            self._store.close()

    def _release(self) -> None:
        try:
            self.lease.release()
        except redis.RedisError:
            pass  # it expires by itself within lease_ms
