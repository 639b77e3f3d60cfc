"""Where the leading writer's batches come from, in stream order.

One object owns every way an entry reaches a decision: our own pending entries read again
(after taking the lead, a failed read, or a reclaim), new entries, the batch read ahead
while the one before commits (by the admission child, or in this process), and the nonce
claims of each batch (workers/writer/nonce_claims.py). The rules it keeps:
- Our pending entries are read again, from the start, before anything newer: after taking
  the lead, and after a read that failed (it may have run, its reply lost, leaving entries
  pending under us that a later read would pass).
- Nothing newer is read ahead while such a re-read is due.
- A read happens only while we hold the lease (the stream adapter checks it in the read).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from producer.contract import now_ms
from producer.signing import Keyring
from workers.adapters.intent_stream import Claims, Entry, IntentStream
from workers.adapters.redis_lease import LeaseKeeper
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter, admit_entries
from workers.settings import Settings
from workers.writer.admission_child import Admitter
from workers.writer.nonce_claims import EarlyClaims, NonceClaimer

REREAD_FROM_START = "0"  # a stream id before every entry: our pending list from its start


@dataclass(frozen=True, slots=True)
class Batch:
    entries: list[Entry]
    candidates: list[Candidate]  # admitted: authenticated and parsed
    dead: list[DeadLetter]
    early: EarlyClaims = None  # nonce claims started before the batch is decided
    rereads: bool = False  # our own pending entries, read again


def reads_ahead(read_n: int, settings: Settings) -> bool:
    """Whether a batch of ``read_n`` new entries overlaps its commit with reading and
    admitting the next one: only under a backlog. Under light load it would only split the
    flow into more, smaller batches, one confirmation job each, and the confirmer's per-job
    cost then delayed confirmations (measured at 3,000/s: p50 233 -> 1,477 ms with
    read-ahead on every batch). Not only a full batch, though: a stream fed about as fast
    as the writer commits seldom leaves one waiting, and each batch then ran in turn."""
    size_min = min(settings.read_ahead_size_min, settings.batch_size_max)
    return settings.commit_overlap and read_n >= size_min


class BatchSource:
    def __init__(self, settings: Settings, stream: IntentStream, lease: LeaseKeeper,
                 keyring: Keyring) -> None:
        self._s = settings
        self._stream = stream
        self._lease = lease
        self.keyring = keyring  # swapped between batches on a reload (SIGHUP)
        self._claimer = NonceClaimer(settings, stream.claim_nonces, now_ms)
        self.admitter = (Admitter(settings, stream.consumer) if settings.admission_process
                         else None)
        self._reread_from: str | None = REREAD_FROM_START
        self._read_failed = False
        self._ahead: Batch | None = None
        self._reclaimed_at = time.monotonic()

    def restart(self) -> None:
        """On taking the lead: our pending entries first. A batch read ahead before is
        dropped (its entries are pending under us, read again in order)."""
        self._reread_from, self._read_failed, self._ahead = REREAD_FROM_START, False, None
        if self.admitter is not None and self.admitter.asked:
            self.admitter.collect(self._lease.keep_quietly)

    @property
    def has_ahead(self) -> bool:
        return self._ahead is not None

    def next(self, wait: bool = True) -> Batch | None:
        """The next batch: the one read ahead, else our pending entries again when due,
        else new entries (waiting up to ``batch_wait_ms`` for some, unless ``wait`` is
        false: the writer has work of its own). None: the stream is idle. A Redis fault
        raises, and the retry reads our pending entries first."""
        batch = self._take_ahead() or self._reread() or self._read_new(wait)
        if batch is None or not batch.rereads:
            self._maybe_reclaim()
        return batch

    def backlogged(self, batch: Batch) -> bool:
        """New entries under a backlog: the next batch is read ahead while this one
        commits (never while our pending entries wait to be read again)."""
        return (not batch.rereads and not self._reread_due()
                and reads_ahead(len(batch.entries), self._s))

    def prefetch(self) -> None:
        """Before a backlogged batch is decided: the admission child reads the next one
        meanwhile (asked only at commit, the writer's thread waited ~30 % of a drain)."""
        if self._ahead is None:
            self._ask()

    def read_ahead(self) -> None:
        """While a batch commits: the child reads the next one, or, without a child, it
        is read here and its nonces claimed on the I/O thread. Never waits for entries."""
        if self._ahead is not None or self._ask() or self._reread_due():
            return
        try:
            entries = self._stream.read_new_now(self._lease.owner)
        except redis.RedisError:
            self._read_failed = True
            return
        if entries:
            batch = self.admit(entries)
            self._ahead = dataclasses.replace(batch, early=self._claimer.start(batch.candidates))

    def collect(self) -> None:
        """While a batch commits, after the rest: the child's batch, and the child asked
        for the one after it (waiting for the child was 15 % of the writer's thread)."""
        if self.admitter is not None and self.admitter.asked:
            self._collect()
            if self._ahead is not None:
                self._ask()

    def claims(self, batch: Batch, now: int) -> Claims:
        """The nonce claims of every candidate of ``batch`` fresh at ``now``."""
        return self._claimer.settle(batch.candidates, batch.early, now)

    def admit(self, entries: Sequence[Entry], rereads: bool = False) -> Batch:
        """Entries read in this process, authenticated and parsed."""
        return Batch(list(entries), *admit_entries(entries, self.keyring), rereads=rereads)

    def close(self) -> None:
        if self.admitter is not None:
            self.admitter.close()
        self._claimer.close()

    def _take_ahead(self) -> Batch | None:
        if self._ahead is None and self.admitter is not None and self.admitter.asked:
            self._collect()  # asked, and no commit collected it: never leave it waiting
        batch, self._ahead = self._ahead, None
        return batch

    def _reread(self) -> Batch | None:
        """Our pending entries, a batch at a time, in stream order; None once all read."""
        if self._read_failed:
            self._read_failed, self._reread_from = False, REREAD_FROM_START
        if self._reread_from is None:
            return None
        entries = self._stream.read_pending(self._reread_from)
        self._reread_from = entries[-1][0] if entries else None
        return self.admit(entries, rereads=True) if entries else None

    def _read_new(self, wait: bool) -> Batch | None:
        read = self._stream.read_new if wait else self._stream.read_new_now
        try:
            entries = read(self._lease.owner)
        except redis.RedisError:
            self._read_failed = True
            raise
        return self.admit(entries) if entries else None

    def _ask(self) -> bool:
        return (self.admitter is not None and not self._reread_due()
                and self.admitter.ask(self.keyring, self._lease.owner))

    def _collect(self) -> None:
        got = self.admitter.collect(self._lease.keep_quietly)  # type: ignore[union-attr]
        if got is None:  # what the child read, if anything, is pending under us
            self._read_failed = True
        elif got.entries:
            self._ahead = Batch(got.entries, got.candidates, got.dead, got.claims)

    def _reread_due(self) -> bool:
        return self._read_failed or self._reread_from is not None

    def _maybe_reclaim(self) -> None:
        """Every lease period, take over entries another consumer has left idle that long,
        and read them next. A writer that lost the lead while a read was in flight may
        still pull entries into its own pending list after we claimed everything on taking
        over; they would wait for the next change of leader. Checked whether or not the
        stream is idle: under sustained load they would otherwise wait until it stops."""
        now = time.monotonic()
        if self._reread_due() or now - self._reclaimed_at < self._s.lease_ms / 1000:
            return
        self._reclaimed_at = now
        try:
            if self._stream.claim_all(min_idle_ms=self._s.lease_ms) > 0:
                self._reread_from = REREAD_FROM_START
        except redis.RedisError:
            pass  # the next period tries again; the batch path reports Redis faults
