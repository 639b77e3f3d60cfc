"""Redis memory stays bounded over a 200,000-intent load with retention on.

Without retention Redis would keep every intent (about 450 bytes each) and every
confirmation; with it, acknowledged intents are trimmed, the confirmations and per-user
streams are capped, so memory follows the backlog, not the history.
"""

from __future__ import annotations

import threading

import redis

from tests.conftest import Procs, wait_for
from tests.support import drained, query

INTENTS = 200_000
PRODUCERS = 2
USERS = 200
RATE_PER_PRODUCER = 3_000  # below the writer's pace: the backlog stays small
MEMORY_MAX_BYTES = 40 * 2**20  # the whole history untrimmed would need several times this
GROWTH_MAX = 1.5  # memory in the second half vs the first: a growing history would be ~2x
# The nonce records (one key per intent for nonce_ttl_s) are bounded by rate x TTL, not by
# history: a shorter TTL than the default 90 s reaches that plateau within the test.
RETENTION = {"BETSTREAM_NONCE_TTL_S": "10", "BETSTREAM_INTENT_AGE_MAX_MS": "8000",
             "BETSTREAM_BREAKER_BACKLOG_AGE_MAX_MS": "5000",
             "BETSTREAM_INTENTS_RETENTION_MS": "2000", "BETSTREAM_INTENTS_TRIM_INTERVAL_S": "0.5",
             "BETSTREAM_CONFIRMATIONS_LEN_MAX": "5000", "BETSTREAM_USER_CONFIRMATIONS_LEN_MAX": "20"}


def test_redis_memory_stays_bounded_over_200k_intents(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str]) -> None:
    procs.env = {**env, **RETENTION}
    procs.start("writer")
    procs.start("confirmer")
    per = INTENTS // PRODUCERS - USERS // PRODUCERS
    loads = [procs.start("load", "--users", str(USERS // PRODUCERS), "--user-first",
                         str(1 + i * USERS // PRODUCERS), "--bets", str(per), "--rate",
                         str(RATE_PER_PRODUCER), "--quiet", name=f"load{i}")
             for i in range(PRODUCERS)]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            samples.append(redis_client.info("memory")["used_memory"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert all(p.wait(300) == 0 for p in loads)
        wait_for(lambda: drained(redis_client), 120, "the writer to drain the load")
    finally:
        done.set()
        sampler.join(5)
    committed = query(env["BETSTREAM_DB"], "SELECT COUNT(*) FROM outcomes")[0][0]
    assert committed >= INTENTS
    peak = max(samples)
    print(f"redis used_memory peak {peak / 2**20:.1f} MiB over {committed} intents "
          f"({len(samples)} samples)")
    assert peak < MEMORY_MAX_BYTES, f"peak {peak / 2**20:.1f} MiB"
    half = len(samples) // 2
    assert max(samples[half:]) < GROWTH_MAX * max(samples[:half]), "memory plateaus"
    wait_for(lambda: redis_client.xlen("betstream:intents") < 40_000, 10,
             "acknowledged intents to be trimmed")
