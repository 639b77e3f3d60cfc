"""The sustained benchmark's verdict: a writer that keeps up, and one whose backlog grows."""

from __future__ import annotations

from bench.sustained import summarise

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
