"""Kill the writer (SIGKILL) at random moments under load: nothing lost, nothing doubled."""

from __future__ import annotations

import random
import signal
import time

import redis

from tests.conftest import KEYRING, Procs, wait_for
from tests.e2e.model import replay
from tests.support import drained, query

USERS = 40
BETS_PER_PRODUCER = 9_960  # 2 x (40 deposits + 9,960 intents) = 20,000 intents
KILLS_MIN = 3


def test_writer_sigkilled_under_load_loses_and_doubles_nothing(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str]) -> None:
    rng = random.Random()
    writer_env = {"BETSTREAM_LEASE_MS": "1000", "BETSTREAM_BATCH_SIZE_MAX": "200"}
    load_args = ("load", "--users", str(USERS), "--bets", str(BETS_PER_PRODUCER),
                 "--rate", "2500", "--withdrawals", "0.05", "--duplicates", "0.02",
                 "--deposit", "20000", "--quiet")
    producers = [procs.start(*load_args, "--seed", str(s), name=f"load{s}") for s in (1, 2)]
    writer = procs.start("writer", **writer_env)
    kills = 0
    while kills < KILLS_MIN or any(p.poll() is None for p in producers):
        time.sleep(rng.uniform(0.3, 1.2))  # a random moment to crash at, not a wait
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        kills += 1
        writer = procs.start("writer", **writer_env)
    assert all(p.wait(60) == 0 for p in producers), "both producers finished cleanly"

    wait_for(lambda: drained(redis_client), 120, "the restarted writer to drain the stream")
    db = env["BETSTREAM_DB"]
    model = replay(redis_client, {k: v["secret"].encode() for k, v in KEYRING.items()})

    assert model.entries >= 20_000 and kills >= KILLS_MIN
    assert model.resent > 0, "the load re-sent some intents (duplicates)"
    counts = dict(query(db, "SELECT id, COUNT(*) FROM outcomes GROUP BY id"))
    assert set(counts) == set(model.outcomes), "every intent id has an outcome"
    assert set(counts.values()) == {1}, "and exactly one"
    stored = dict(query(db, "SELECT id, COALESCE(reason, status) FROM outcomes"))
    assert stored == model.outcomes, "each outcome is what the stream order implies"
    players = dict(query(db, "SELECT id, balance FROM users WHERE id > 0"))
    assert players == model.balances, "balances equal the independent model"

    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
