"""Latency histograms: every value counts once, in the first bucket at or above it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.adapters.metrics_store import HISTOGRAMS, LATENCY_BUCKETS_MS, Recorder

_EDGES = st.sampled_from([0, *LATENCY_BUCKETS_MS, *(b + 1 for b in LATENCY_BUCKETS_MS)])


def _expected(values: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        bucket = next((str(b) for b in LATENCY_BUCKETS_MS if value <= b), "+Inf")
        out[bucket] = out.get(bucket, 0) + 1
    if values:
        out["count"], out["sum"] = len(values), sum(values)
    return out


@given(st.lists(st.integers(-10, 100_000) | _EDGES, max_size=200))
def test_each_value_lands_in_the_first_bucket_at_or_above_it(values: list[int]) -> None:
    assert HISTOGRAMS["ingress_to_commit_ms"][1] == LATENCY_BUCKETS_MS
    recorder = Recorder(None, 1.0)  # type: ignore[arg-type]  # nothing is flushed here
    recorder.observe_many("ingress_to_commit_ms", values)
    recorder.observe_many("ingress_to_commit_ms", [])
    got = {k: v for k, v in recorder._hist.get("ingress_to_commit_ms", {}).items() if v}
    assert got == {k: v for k, v in _expected(values).items() if v}
