"""The breaker's state in Redis (one hash + a transition log) and the writer's hook.

The writer is the only process that moves the breaker automatically; operators can force
it with ``betstream breaker open|close``. Every change is a compare-and-set on a version
number, so an operator's force is never overwritten by a writer that had not seen it.
"""

from __future__ import annotations

import time
from typing import Final

import redis

from producer import constants as c
from producer.errors import StoreError
from producer.breaker_state import Breaker, BreakerLimits, Snapshot, hash_fields, parse
from workers.breaker_core import force, on_failure, on_success, on_tick
from workers.hooks import BatchReport, Hook
from workers.logs import get_logger

LOG_LEN_MAX: Final = 10_000
REDIS_UNREACHABLE: Final = (redis.ConnectionError, redis.TimeoutError)  # incl. LOADING

# KEYS[1] hash, KEYS[2] log stream; ARGV[1] expected version, ARGV[2] log maxlen,
# then field/value pairs. Writes only if nobody changed the version meanwhile.
_CAS: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'version', current + 1, unpack(fields))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return current + 1
"""


class BreakerStore:
    def __init__(self, client: redis.Redis, limits: BreakerLimits) -> None:
        self._redis = client
        self.limits = limits
        self._cas = client.register_script(_CAS)

    def load(self) -> Snapshot:
        snap = parse(self._redis.hgetall(c.KEY_BREAKER), self.limits)
        return Snapshot(snap.breaker, snap.version, self.limits)  # the writer's own limits

    def save(self, expected_version: int, b: Breaker) -> int | None:
        """New version, or None if someone else (an operator) changed it first."""
        flat = [x for kv in hash_fields(b, self.limits).items() for x in kv]
        version = self._cas(keys=[c.KEY_BREAKER, c.STREAM_BREAKER_LOG],
                            args=[expected_version, LOG_LEN_MAX, *flat])
        return None if int(version) < 0 else int(version)

    def force(self, state: str, reason: str) -> Breaker:
        for _ in range(10):  # a bounded compare-and-set loop
            snap = self.load()
            forced = force(snap.breaker, state, now_ms(), reason)
            if self.save(snap.version, forced) is not None:
                return forced
        raise RuntimeError("breaker kept changing; try again")

    def transitions(self, count: int = 20) -> list[dict[str, str]]:
        rows = self._redis.xrevrange(c.STREAM_BREAKER_LOG, count=count)
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
