"""The writer's breaker hook: commit results and the backlog's age move the breaker's
state machine; transitions are saved to Redis (``workers/adapters/breaker_store.py``) and logged."""

from __future__ import annotations

import time

import redis

from producer.breaker_state import OPEN, Breaker, Snapshot
from producer.contract import now_ms
from producer.errors import StoreError
from workers.adapters.breaker_store import REDIS_UNREACHABLE, BreakerStore
from workers.core.breaker_machine import on_failure, on_success, on_tick
from workers.logs import get_logger
from workers.writer.hooks import BatchReport, Hook


class BreakerHook(Hook):
    """Feeds commit results and backlog age into the state machine; saves transitions."""

    def __init__(self, store: BreakerStore, sync_interval_s: float) -> None:
        self._store = store
        self._sync_s = sync_interval_s
        self._synced = 0.0
        self._snap = Snapshot(Breaker(), 0, store.limits)
        self._unsaved = False  # our state holds a transition Redis has not taken yet
        self._log = get_logger("betstream.breaker")

    def on_batch(self, report: BatchReport) -> None:
        age = now_ms() - report.oldest_ingress_ms if report.oldest_ingress_ms else 0
        self._apply(lambda b, lim, t: on_success(b, lim, t, report.commit_ms, age))

    def on_retry(self, what: str, error: Exception, attempt: int, delay_ms: int) -> None:
        if isinstance(error, REDIS_UNREACHABLE):  # any step: the pipeline cannot move
            reason = f"redis unreachable ({what}): {error}"
        # Any store fault counts, wherever it struck: a writer that cannot even take the
        # fencing epoch (disk full, locked, read-only) commits nothing either.
        elif what in ("commit", "open_store") or isinstance(error, StoreError):
            reason = str(error)
        else:
            return
        self._apply(lambda b, lim, t: on_failure(b, lim, t, reason[:200]))

    def on_idle(self) -> None:
        self._apply(lambda b, lim, t: on_tick(b, lim, t, 0))

    def on_invariant_violation(self, error: Exception) -> None:
        """Forced open: producers shed until an operator has looked (``breaker close``)."""
        try:
            self._store.force(OPEN, f"invariant violation: {error}"[:200])
        except redis.RedisError:
            self._log.error("breaker.force_failed", reason="Redis unreachable")
        except OSError as exc:
            self._log.error("breaker.force_failed", reason=f"not recorded: {exc.strerror}")

    def on_redis_data_lost(self, committed_seq: int) -> None:
        """A breaker forced open is forced open again from its record beside the ledger;
        a record that cannot be read is reported, never taken as "not forced"."""
        try:
            record = self._store.forced_record()
        except (OSError, ValueError, KeyError) as exc:
            self._log.error("breaker.record_unreadable", error=str(exc)[:200],
                            action="a forced breaker may have been lost with Redis's data: "
                                   "check `betstream breaker` and force it again if needed")
            return
        if record is None:
            return
        try:
            self._store.force(OPEN, record[1])
        except (redis.RedisError, OSError) as exc:
            self._log.error("breaker.restore_failed", error=str(exc)[:200])
            return
        self._synced = 0.0  # adopt the restored state at once
        self._log.warning("breaker.restored", state=OPEN, reason=record[1],
                          why="redis lost its data; the forced state came from its record")

    def _apply(self, step) -> None:
        """Decide on what we know; a transition Redis could not take is saved (first, with
        its original time) once Redis answers, so the log shows the outage's OPEN."""
        try:
            self._sync()
            if self._unsaved:
                self._save(self._snap.breaker)
        except redis.RedisError:
            pass  # Redis away: the state machine still runs on our copy
        new = step(self._snap.breaker, self._snap.limits, now_ms())
        if new.state != self._snap.breaker.state:
            self._save(new)
        else:  # counters only: no transition to share or log
            self._snap = Snapshot(new, self._snap.version, self._snap.limits)

    def _sync(self) -> None:
        """Adopt the shared state when someone else (an operator) changed it."""
        if time.monotonic() - self._synced >= self._sync_s:
            snap = self._store.load()
            if snap.version != self._snap.version:
                if self._unsaved and not snap.breaker.forced:  # ours is newer (Redis was
                    snap = Snapshot(self._snap.breaker, snap.version, self._snap.limits)  # away)
                else:
                    self._unsaved = False
                self._snap = snap
            self._synced = time.monotonic()

    def _save(self, new: Breaker) -> None:
        old = self._snap.breaker
        try:
            version = self._store.save(self._snap.version, new)
        except redis.RedisError:
            self._snap = Snapshot(new, self._snap.version, self._snap.limits)
            self._unsaved = True
            self._log_transition(old, new, saved=False)
            return
        self._unsaved = False
        if version is None:  # an operator moved it: adopt theirs next time
            self._synced = 0.0
            return
        self._snap = Snapshot(new, version, self._snap.limits)
        self._log_transition(old, new, saved=True)

    def _log_transition(self, old: Breaker, new: Breaker, saved: bool) -> None:
        if new.state != old.state:
            self._log.warning("breaker.transition", old=old.state, new=new.state,
                              reason=new.reason, opened=new.opened, saved=saved)
