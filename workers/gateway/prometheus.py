"""Prometheus exposition of the metrics the writer and confirmer keep in Redis."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from producer import constants as c
from producer.breaker_state import CLOSED, HALF_OPEN, OPEN, BreakerLimits, parse
from workers.adapters.confirmation_publisher import read_progress
from workers.adapters.intent_stream import backlog
from workers.adapters.metrics_store import HISTOGRAMS, read_histogram


class RedisMetrics(Collector):
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def collect(self) -> Iterator:
        stats = {k.decode(): int(v) for k, v in self._redis.hgetall(c.KEY_STATS).items()}
        yield _labelled(stats, "betstream_intents_accepted", "accepted intents", "accepted", None)
        yield _labelled(stats, "betstream_intents_rejected", "rejected intents by reason",
                        "rejected:", "reason")
        yield _labelled(stats, "betstream_deadletters", "dead-lettered entries by reason",
                        "deadletter:", "reason")
        yield _labelled(stats, "betstream_confirmations", "confirmations published",
                        "confirmed", None)
        yield _labelled(stats, "betstream_redis_data_lost", "times the writer found Redis "
                        "without its data", "redis_data_lost", None)
        for name, (doc, _) in HISTOGRAMS.items():
            buckets, total, _count = read_histogram(self._redis, name)
            hist = HistogramMetricFamily(f"betstream_{name}", doc)
            hist.add_metric([], buckets, total)
            yield hist
        yield from self._gauges()

    def _gauges(self) -> Iterator:
        state = backlog(self._redis) or (0, 0)
        yield GaugeMetricFamily("betstream_stream_pending", "delivered, not yet acked",
                                value=state[0])
        yield GaugeMetricFamily("betstream_stream_lag", "in the stream, not yet delivered",
                                value=state[1])
        yield GaugeMetricFamily("betstream_confirmer_published_seq",
                                "the last outcome seq the confirmer published",
                                value=(read_progress(self._redis) or (0, 0))[0])
        snap = parse(self._redis.hgetall(c.KEY_BREAKER), BreakerLimits())
        state = GaugeMetricFamily("betstream_breaker_state", "1 for the current state",
                                  labels=["state"])
        for name in (CLOSED, OPEN, HALF_OPEN):
            state.add_metric([name], 1 if snap.breaker.state == name else 0)
        yield state
        yield CounterMetricFamily("betstream_breaker_opened", "transitions to OPEN",
                                  value=snap.breaker.opened)


def _labelled(stats: dict[str, int], name: str, doc: str, prefix: str,
              label: str | None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label] if label else None)
    if label is None:
        family.add_metric([], stats.get(prefix, 0))
        return family
    for key, value in sorted(stats.items()):
        if key.startswith(prefix):
            family.add_metric([key[len(prefix):]], value)
    return family


def registry_for(client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RedisMetrics(client))
    return registry
