"""The breaker state machine with an injected clock: exact hysteresis semantics."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from producer.breaker_state import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerLimits,
    admits,
    cooldown_s,
    retry_after_s,
)
from workers.core.breaker_machine import (
    force,
    on_failure,
    on_success,
    on_tick,
    on_writer_silent,
)

LIM = BreakerLimits(failures_max=3, commit_max_ms=500, backlog_age_max_ms=10_000,
                    cooldown_s=5, cooldown_max_s=40, stability_s=30, half_open_share=0.25)
S = 1000  # ms per second


def opened_at(t: int) -> Breaker:
    b = Breaker()
    for _ in range(3):
        b = on_failure(b, LIM, t, "locked")
    assert b.state == OPEN
    return b


def half_open_at(t: int) -> Breaker:
    b = on_tick(opened_at(t - 5 * S), LIM, t, 0)
    assert b.state == HALF_OPEN and b.since_ms == t
    return b


def test_closed_opens_after_consecutive_failures_only() -> None:
    b = on_failure(on_failure(Breaker(), LIM, 0, "x"), LIM, 1, "x")
    assert b.state == CLOSED and b.failures == 2
    b = on_success(b, LIM, 2, commit_ms=10, backlog_age_ms=0)
    assert b.failures == 0, "a success resets the count"
    b = on_failure(on_failure(on_failure(b, LIM, 3, "x"), LIM, 4, "x"), LIM, 5, "disk full")
    assert b.state == OPEN and "3 consecutive commit failures: disk full" in b.reason


def test_slow_commit_and_old_backlog_open_it() -> None:
    assert on_success(Breaker(), LIM, 0, commit_ms=501, backlog_age_ms=0).state == OPEN
    assert on_success(Breaker(), LIM, 0, commit_ms=500, backlog_age_ms=0).state == CLOSED
    assert on_tick(Breaker(), LIM, 0, backlog_age_ms=10_001).state == OPEN
    assert on_tick(Breaker(), LIM, 0, backlog_age_ms=10_000).state == CLOSED


def test_open_waits_for_cooldown_and_a_drained_backlog() -> None:
    b = opened_at(0)
    assert on_tick(b, LIM, 5 * S - 1, 0).state == OPEN
    assert on_tick(b, LIM, 5 * S, 20_000).state == OPEN, "backlog still too old"
    assert on_tick(b, LIM, 5 * S, 0).state == HALF_OPEN


def test_closes_at_exactly_30_s_of_health_not_29_9() -> None:
    b = half_open_at(100 * S)
    assert on_tick(b, LIM, 100 * S + 29_900, 0).state == HALF_OPEN
    assert on_success(b, LIM, 100 * S + 29_999, 5, 0).state == HALF_OPEN
    closed = on_tick(b, LIM, 130 * S, 0)
    assert closed.state == CLOSED and closed.since_ms == 130 * S


def test_a_failure_at_29_s_restarts_the_window() -> None:
    b = half_open_at(0)
    b = on_failure(b, LIM, 29 * S, "locked")
    assert b.state == OPEN and b.reopens == 1
    assert cooldown_s(b, LIM) == 10, "a re-open doubles the cool-down"
    b = on_tick(b, LIM, 29 * S + 10 * S, 0)
    assert b.state == HALF_OPEN and b.since_ms == 39 * S
    assert on_tick(b, LIM, 39 * S + 29_999, 0).state == HALF_OPEN, "the window restarted"
    assert on_tick(b, LIM, 69 * S, 0).state == CLOSED


def test_half_open_reopens_on_slow_commit_or_old_backlog() -> None:
    assert on_success(half_open_at(0), LIM, 1, commit_ms=900, backlog_age_ms=0).state == OPEN
    assert on_tick(half_open_at(0), LIM, 1, backlog_age_ms=11_000).state == OPEN


def test_cooldown_growth_is_capped_and_reset_by_closing() -> None:
    b = Breaker(state=OPEN, reopens=10)
    assert cooldown_s(b, LIM) == 40
    closed = Breaker(state=HALF_OPEN, reopens=3).to(CLOSED, 0, "healthy")
    assert closed.reopens == 0


def test_forced_open_holds_until_forced_closed() -> None:
    b = force(Breaker(), OPEN, 0, "maintenance")
    assert b.forced and b.state == OPEN and b.reason == "forced: maintenance"
    assert on_tick(b, LIM, 10**9, 0).state == OPEN
    assert on_success(b, LIM, 10**9, 1, 0).state == OPEN
    b = force(b, CLOSED, 5, "done")
    assert b.state == CLOSED and not b.forced
    assert on_failure(on_failure(on_failure(b, LIM, 6, "x"), LIM, 7, "x"), LIM, 8, "x").state == OPEN


def test_producers_are_admitted_by_state() -> None:
    assert admits(Breaker(), LIM, 0.99)
    assert not admits(opened_at(0), LIM, 0.0)
    half = half_open_at(10 * S)
    assert admits(half, LIM, 0.24) and not admits(half, LIM, 0.25)
    assert retry_after_s(opened_at(0), LIM, 2 * S) == 3.0
    assert retry_after_s(opened_at(0), LIM, 9 * S) == 0.1, "never zero"


def test_a_silent_writer_opens_it_and_says_who_noticed() -> None:
    for b in (Breaker(), half_open_at(50 * S)):
        tripped = on_writer_silent(b, 60 * S, 12_345, 57, "gateway host:4242")
        assert tripped.state == OPEN and tripped.since_ms == 60 * S and not tripped.forced
        assert tripped.reason == ("writer silent for 12,345 ms with 57 intents waiting "
                                  "(noticed by gateway host:4242)")
        assert tripped.opened == b.opened + 1


def test_a_silent_writer_leaves_a_forced_or_open_breaker_alone() -> None:
    forced = force(Breaker(), OPEN, 0, "maintenance")
    assert on_writer_silent(forced, 10 * S, 30_000, 5, "gateway") == forced
    opened = opened_at(0)
    assert on_writer_silent(opened, 10 * S, 30_000, 5, "gateway") == opened, (
        "the first reason and its cool-down stay")


def test_a_writer_back_after_silence_moves_it_on_as_after_any_fault() -> None:
    b = on_writer_silent(Breaker(), 0, 20_000, 3, "standby writer w2")
    assert on_tick(b, LIM, 5 * S - 1, 0).state == OPEN
    b = on_tick(b, LIM, 5 * S, 0)
    assert b.state == HALF_OPEN
    assert on_success(b, LIM, 35 * S, 5, 0).state == CLOSED


EVENTS = ["fail", "ok", "slow", "tick", "backlog", "silent"]
events = st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, 20_000)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(events)
def test_never_closes_without_a_full_stability_window(seq: list[tuple[str, int]]) -> None:
    """Whatever happens, CLOSED is only reached from HALF_OPEN after 30 s in it."""
    b, t = Breaker(), 0
    for event, dt in seq:
        t += dt
        before = b
        if event == "fail":
            b = on_failure(b, LIM, t, "x")
        elif event == "slow":
            b = on_success(b, LIM, t, 10_000, 0)
        elif event == "ok":
            b = on_success(b, LIM, t, 1, 0)
        elif event == "backlog":
            b = on_tick(b, LIM, t, 50_000)
        elif event == "silent":
            b = on_writer_silent(b, t, 20_000, 1, "gateway")
        else:
            b = on_tick(b, LIM, t, 0)
        if b.state == CLOSED and before.state != CLOSED:
            assert before.state == HALF_OPEN and t - before.since_ms >= 30 * S
        if b.state == HALF_OPEN and before.state == OPEN:
            assert t - before.since_ms >= cooldown_s(before, LIM) * S
