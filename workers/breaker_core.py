"""The circuit breaker's state machine. Pure: the clock is a parameter, no I/O.

CLOSED -> OPEN on consecutive commit failures, a slow commit, or a backlog older than its
limit. OPEN -> HALF_OPEN once the cool-down has passed and the backlog is back under its
limit. HALF_OPEN -> CLOSED only after ``stability_s`` seconds of uninterrupted health
(the seed's 30 s hysteresis); any failure in HALF_OPEN re-opens it, restarting the
cool-down and, after it, the window. An operator may force OPEN (it then stays open until
forced closed) or force CLOSED.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerLimits:
    failures_max: int = 3  # consecutive failed commits
    commit_ms_max: int = 2_000
    backlog_age_ms_max: int = 30_000  # below the freshness window, so we shed before `stale`
    cooldown_s: float = 5.0
    cooldown_max_s: float = 60.0  # each re-open from HALF_OPEN doubles the cool-down up to this
    stability_s: float = 30.0
    half_open_share: float = 0.1  # share of intents producers may send while HALF_OPEN


@dataclass(frozen=True, slots=True)
class Breaker:
    state: str = CLOSED
    since_ms: int = 0
    reason: str = ""
    failures: int = 0
    forced: bool = False
    opened: int = 0  # how many times it went OPEN (for flapping bounds and metrics)
    reopens: int = 0  # re-opens from HALF_OPEN since the last CLOSED: grows the cool-down

    def to(self, state: str, now_ms: int, reason: str) -> Breaker:
        opened = self.opened + (1 if state == OPEN else 0)
        if state == CLOSED:
            reopens = 0
        elif state == OPEN and self.state == HALF_OPEN:
            reopens = self.reopens + 1
        else:
            reopens = self.reopens
        return replace(self, state=state, since_ms=now_ms, reason=reason, failures=0,
                       opened=opened, reopens=reopens)


def cooldown_s(b: Breaker, lim: BreakerLimits) -> float:
    """Cool-down of the current OPEN period: doubled per re-open, so a flapping store
    yields a few long OPEN periods instead of one per flap."""
    return min(lim.cooldown_max_s, lim.cooldown_s * 2 ** min(b.reopens, 30))


def _trip(b: Breaker, now_ms: int, reason: str) -> Breaker:
    return b if b.state == OPEN else b.to(OPEN, now_ms, reason)


def on_failure(b: Breaker, lim: BreakerLimits, now_ms: int, error: str) -> Breaker:
    """A commit (or the store) failed."""
    if b.forced:
        return b
    if b.state == HALF_OPEN:
        return b.to(OPEN, now_ms, f"failure while half open: {error}")
    if b.state == OPEN:
        return b
    failures = b.failures + 1
    if failures >= lim.failures_max:
        return b.to(OPEN, now_ms, f"{failures} consecutive commit failures: {error}")
    return replace(b, failures=failures)


def on_success(b: Breaker, lim: BreakerLimits, now_ms: int, commit_ms: float,
               backlog_age_ms: int) -> Breaker:
    """A batch committed in ``commit_ms``; the oldest unacknowledged intent is this old."""
    if b.forced:
        return b
    if commit_ms > lim.commit_ms_max:
        return _trip(b, now_ms, f"commit took {commit_ms:.0f} ms > {lim.commit_ms_max} ms")
    b = replace(b, failures=0)
    return on_tick(b, lim, now_ms, backlog_age_ms)


def on_tick(b: Breaker, lim: BreakerLimits, now_ms: int, backlog_age_ms: int) -> Breaker:
    """Time passes (and the backlog has this age): cool-downs and windows may complete."""
    if b.forced:
        return b
    backlogged = backlog_age_ms > lim.backlog_age_ms_max
    if b.state == CLOSED:
        if backlogged:
            return b.to(OPEN, now_ms, f"backlog {backlog_age_ms} ms old > {lim.backlog_age_ms_max} ms")
        return b
    if b.state == OPEN:
        if now_ms - b.since_ms >= cooldown_s(b, lim) * 1000 and not backlogged:
            return b.to(HALF_OPEN, now_ms, "cool-down over; probing")
        return b
    if backlogged:  # HALF_OPEN
        return b.to(OPEN, now_ms, f"backlog {backlog_age_ms} ms old while half open")
    if now_ms - b.since_ms >= lim.stability_s * 1000:
        return b.to(CLOSED, now_ms, f"healthy for {lim.stability_s:g} s")
    return b


def force(b: Breaker, state: str, now_ms: int, reason: str) -> Breaker:
    """Operator override: forced OPEN holds until forced CLOSED."""
    forced = state == OPEN
    return replace(b.to(state, now_ms, f"forced: {reason}"), forced=forced)


def admits(b: Breaker, lim: BreakerLimits, draw: float) -> bool:
    """Should a producer send? ``draw`` is uniform in [0, 1)."""
    if b.state == CLOSED:
        return True
    if b.state == HALF_OPEN:
        return draw < lim.half_open_share
    return False


def retry_after_s(b: Breaker, lim: BreakerLimits, now_ms: int) -> float:
    """How long a refused producer should wait before trying again (at least 0.1 s)."""
    if b.state == OPEN and not b.forced:
        return max(0.1, cooldown_s(b, lim) - (now_ms - b.since_ms) / 1000)
    return max(0.1, lim.cooldown_s)
