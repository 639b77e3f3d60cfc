"""A writer cannot die silently: a watcher opens the breaker once no writer has shown a
sign of life for ``WRITER_SILENT_MAX_MS`` while intents wait.

A writer killed by a signal (SIGBUS on a ledger whose ``-shm`` could not be written) logs
nothing and moves the breaker no more; producers kept sending into the stream until the
intents turned ``stale``. Whoever notices first trips it: the gateway looks every
``WRITER_SILENCE_CHECK_INTERVAL_MS``, and so does a standby writer while it waits for the
lease. The rules (what counts as a sign of life, from when silence is counted) are in
``workers/core/writer_silence.py``; the trip is the breaker's compare-and-set, so an
operator's force is never overwritten and two watchers trip it once. It is not forced: a
writer that comes back moves it on (cool-down, HALF_OPEN, the stability window).
"""

from __future__ import annotations

import redis

from producer.breaker_state import Breaker
from workers.adapters.breaker_store import BreakerStore
from workers.adapters.intent_stream import backlog
from workers.adapters.writer_health import writer_beacons
from workers.core.breaker_machine import on_writer_silent
from workers.core.writer_silence import Silence, newest_live_beat, observe, overdue_ms
from workers.logs import get_logger
from workers.settings import Settings


class WriterSilence:
    """One watcher: call :meth:`check` every ``WRITER_SILENCE_CHECK_INTERVAL_MS``, from one
    thread (it remembers what it saw)."""

    def __init__(self, client: redis.Redis, store: BreakerStore, silent_max_ms: int,
                 noticed_by: str) -> None:
        self._redis = client
        self._store = store
        self._silent_max_ms = silent_max_ms
        self.noticed_by = noticed_by  # named in the breaker's reason, e.g. "gateway host:pid"
        self.silence = Silence()
        self._log = get_logger("betstream.breaker")

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings,
                      noticed_by: str) -> WriterSilence:
        store = BreakerStore(client, settings.breaker_limits, settings.breaker_record_path)
        return cls(client, store, settings.writer_silence_bound_ms, noticed_by)

    def forget(self) -> None:
        """Start over, as a watcher that has just started (a standby writer that led
        meanwhile: what it remembers from before is no measure of the writers' silence)."""
        self.silence = Silence()

    def check(self, now_ms: int) -> Breaker | None:
        """Look once at ``now_ms``: the breaker as this look opened it, else None (a writer
        is alive, nothing waits, not silent long enough yet, already open or forced, or
        another watcher moved it first). Redis faults return None quietly: the next look
        tries again."""
        try:
            return self._check(now_ms)
        except redis.RedisError:
            return None

    def _check(self, now_ms: int) -> Breaker | None:
        # The backlog first: a beat that landed before the beacons are read is seen, so a
        # writer that drained the backlog meanwhile is never taken for silent.
        state = backlog(self._redis)
        waiting = state[0] + state[1] if state else 0
        beat = newest_live_beat(writer_beacons(self._redis).values())
        self.silence = observe(self.silence, now_ms, beat, waiting)
        silent = overdue_ms(self.silence, now_ms, self._silent_max_ms)
        return None if silent is None else self._trip(now_ms, silent)

    def _trip(self, now_ms: int, silent_ms: int) -> Breaker | None:
        snap = self._store.load()
        tripped = on_writer_silent(snap.breaker, now_ms, silent_ms, self.silence.waiting,
                                   self.noticed_by)
        if tripped == snap.breaker or self._store.save(snap.version, tripped) is None:
            return None  # open or forced already, or changed meanwhile: look again later
        self._log.warning("writer.silent", silent_ms=silent_ms, waiting=self.silence.waiting,
                          last_beat_ms=self.silence.last_beat_ms, noticed_by=self.noticed_by,
                          breaker_was=snap.breaker.state, breaker=tripped.state,
                          reason=tripped.reason)
        return tripped
