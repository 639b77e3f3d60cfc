"""The circuit breaker's state machine: how the writer and operators move it. Pure: the
clock is a parameter, no I/O (the state record itself: ``producer/breaker_state.py``).

CLOSED -> OPEN on consecutive commit failures, a slow commit, a backlog older than its
limit, or a writer silent while intents wait (noticed by a gateway or a standby writer).
OPEN -> HALF_OPEN once the cool-down has passed and the backlog is back under its limit.
HALF_OPEN -> CLOSED only after ``stability_s`` seconds of uninterrupted health (the seed's
30 s hysteresis); any failure in HALF_OPEN re-opens it, restarting the cool-down and,
after it, the window. An operator may force OPEN (it then stays open until forced closed)
or force CLOSED.
"""

from __future__ import annotations

from dataclasses import replace

from producer.breaker_state import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerLimits, cooldown_s


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
    if commit_ms > lim.commit_max_ms:
        return _trip(b, now_ms, f"commit took {commit_ms:.0f} ms > {lim.commit_max_ms} ms")
    b = replace(b, failures=0)
    return on_tick(b, lim, now_ms, backlog_age_ms)


def on_tick(b: Breaker, lim: BreakerLimits, now_ms: int, backlog_age_ms: int) -> Breaker:
    """Time passes (and the backlog has this age): cool-downs and windows may complete."""
    if b.forced:
        return b
    backlogged = backlog_age_ms > lim.backlog_age_max_ms
    if b.state == CLOSED:
        if backlogged:
            return b.to(OPEN, now_ms,
                        f"backlog {backlog_age_ms} ms old > {lim.backlog_age_max_ms} ms")
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


def on_writer_silent(b: Breaker, now_ms: int, silent_ms: int, waiting: int,
                     noticed_by: str) -> Breaker:
    """No writer has shown a sign of life for ``silent_ms`` while ``waiting`` intents wait
    (whoever watches decides that it is long enough): producers must shed instead of
    feeding a dead pipeline. Not forced, so a writer that comes back moves it on as after
    any fault (cool-down, HALF_OPEN, the stability window)."""
    if b.forced:
        return b
    return _trip(b, now_ms, f"writer silent for {silent_ms:,} ms with {waiting:,} intents "
                            f"waiting (noticed by {noticed_by})")
