"""Metrics shared through Redis, rendered as Prometheus text by the gateway.

Writer and confirmer are separate processes (and may restart), so they add their counts
into Redis hashes; the gateway's ``/metrics`` reads them back. Each process aggregates in
memory and flushes at most every ``flush_interval_s``: one pipelined round trip, off the
per-intent path.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

import redis

from producer import constants as c

LATENCY_BUCKETS_MS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
                             30000, 60000)
SIZE_BUCKETS: Final = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
HISTOGRAMS: Final = {
    "batch_size": ("intents per committed batch", SIZE_BUCKETS),
    "commit_ms": ("SQLite commit latency of a batch (ms)", LATENCY_BUCKETS_MS),
    "ingress_to_commit_ms": ("stream ingress to durable commit, per intent (ms)",
                             LATENCY_BUCKETS_MS),
    "ingress_to_confirm_ms": ("stream ingress to published confirmation, per intent (ms)",
                              LATENCY_BUCKETS_MS),
}


def histogram_key(name: str) -> str:
    return f"{c.KEY_METRICS_PREFIX}{name}"


class Recorder:
    """In-memory counters and histograms, flushed to Redis in one pipeline."""

    def __init__(self, client: redis.Redis, flush_interval_s: float) -> None:
        self._redis = client
        self._interval = flush_interval_s
        self._last = time.monotonic()
        self._counters: Counter[str] = Counter()
        self._hist: dict[str, Counter[str]] = {}

    def count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    def observe_many(self, name: str, values: Iterable[float]) -> None:
        """Count each value in the first bucket >= it (``+Inf`` past the last). Sorted
        once, then one bisection per bucket: the writer observes every intent's latency,
        and a Python step per value was ~2 % of its busiest thread."""
        buckets = HISTOGRAMS[name][1]
        hist = self._hist.setdefault(name, Counter())
        ordered = sorted(values)
        below = 0
        for bound in buckets:
            upto = bisect.bisect_right(ordered, bound)
            if upto > below:
                hist[str(bound)] += upto - below
            below = upto
        if len(ordered) > below:
            hist["+Inf"] += len(ordered) - below
        hist["count"] += len(ordered)
        hist["sum"] += sum(map(int, ordered))

    def maybe_flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < self._interval:
            return
        self._last = time.monotonic()
        if not self._counters and not self._hist:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            self.write_to(pipe)
            pipe.execute()
        except redis.RedisError:
            return  # keep the counts and try again at the next flush
        self._counters.clear()
        self._hist.clear()

    def write_to(self, pipe: redis.client.Pipeline) -> None:
        """Queue the increments on a pipeline the caller executes (and then clears us)."""
        for name, n in self._counters.items():
            pipe.hincrby(c.KEY_STATS, name, n)
        for name, hist in self._hist.items():
            for field, n in hist.items():
                pipe.hincrby(histogram_key(name), field, n)


def read_histogram(client: redis.Redis, name: str) -> tuple[list[tuple[str, int]], int, int]:
    """Cumulative buckets as Prometheus wants them, plus sum and count."""
    raw = {k.decode(): int(v) for k, v in client.hgetall(histogram_key(name)).items()}
    buckets: Sequence[float] = HISTOGRAMS[name][1]
    cumulative, total = [], 0
    for bound in buckets:
        total += raw.get(str(bound), 0)
        cumulative.append((str(bound), total))
    cumulative.append(("+Inf", total + raw.get("+Inf", 0)))
    return cumulative, raw.get("sum", 0), raw.get("count", 0)
