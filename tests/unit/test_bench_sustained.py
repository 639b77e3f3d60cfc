"""The sustained benchmark's verdict: a writer that keeps up, and one whose backlog grows."""

from __future__ import annotations

from bench.sustained import _load_summary, summarise

RATE_PER_S = 1_000
SECONDS = 10


def _run(commit_lag_ms) -> list[tuple[str, int, str | None]]:
    """One intent per ms for SECONDS s, each committed ``commit_lag_ms(i)`` after ingress."""
    start = 1_700_000_000_000
    return [(f"{start + i}-0", start + i + commit_lag_ms(i), None)
            for i in range(RATE_PER_S * SECONDS)]


def test_a_writer_whose_lag_stays_bounded_kept_up() -> None:
    r = summarise(_run(lambda i: 20 + i % 50), RATE_PER_S, SECONDS, 2)
    assert r["kept_up"]
    assert abs(r["offered_per_s"] - RATE_PER_S) <= 5
    assert abs(r["committed_per_s"] - RATE_PER_S) <= 20
    assert r["lag_max_ms"] == 69 and r["stale"] == 0


def test_a_writer_committing_a_fifth_slower_than_offered_did_not_keep_up() -> None:
    """Each intent waits longer than the one before: the backlog grows with the run."""
    r = summarise(_run(lambda i: i // 4), RATE_PER_S, SECONDS, 2)
    assert not r["kept_up"]
    assert r["committed_per_s"] < 0.85 * r["offered_per_s"]
    assert r["lag_max_ms"] >= 2_000 and r["tail_ms"] >= 2_000


def test_stale_rejections_are_counted() -> None:
    rows = _run(lambda i: 5)
    rows[:3] = [(entry_id, at, "stale") for entry_id, at, _ in rows[:3]]
    assert summarise(rows, RATE_PER_S, SECONDS, 2)["stale"] == 3


def test_a_run_whose_load_the_breaker_shed_did_not_keep_up() -> None:
    """Shed load was offered below the asked rate: keeping up with it proves nothing."""
    rows = _run(lambda i: 20 + i % 50)
    assert summarise(rows, RATE_PER_S, SECONDS, 2)["kept_up"]
    r = summarise(rows, RATE_PER_S, SECONDS, 2, shed=500)
    assert not r["kept_up"] and r["shed"] == 500


def test_the_load_summary_is_found_among_log_lines(tmp_path) -> None:
    log = tmp_path / "load-1.log"
    log.write_text('{"event": "connected", "level": "info"}\n'
                   '{"sent": 9, "shed": 4, "seconds": 1.0}\n'
                   '{"event": "closed", "level": "info"}\n')
    assert _load_summary(log)["shed"] == 4


def test_a_slow_start_does_not_decide_the_verdict_but_shows_in_the_maximum() -> None:
    """The first batches (child starting, caches cold) wait; the run's middle is steady."""
    ramp = RATE_PER_S * SECONDS // 20  # the first 5 % of the run
    r = summarise(_run(lambda i: 3_000 if i < ramp else 20 + i % 50), RATE_PER_S, SECONDS, 2)
    assert r["kept_up"] and r["lag_p99_ms"] < 100
    assert r["lag_max_ms"] == 3_000


def test_rates_that_match_with_a_lag_over_the_bound_did_not_keep_up() -> None:
    """Committed as fast as offered, but every intent a second and a half late."""
    r = summarise(_run(lambda i: 1_500 + i % 50), RATE_PER_S, SECONDS, 2)
    assert abs(r["committed_per_s"] - r["offered_per_s"]) <= 20
    assert not r["kept_up"] and r["lag_p99_ms"] > 1_000
