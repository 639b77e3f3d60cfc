"""Operators force the breaker (recorded); the load generator backs off and reports sheds."""

from __future__ import annotations

import json

import redis

from producer.breaker_state import BreakerLimits
from tests.conftest import Procs, wait_for
from workers.adapters.breaker_store import BreakerStore


def test_force_open_is_recorded_and_the_load_generator_waits_it_out(
        procs: Procs, redis_client: redis.Redis) -> None:
    refused = procs.run("breaker", "open")
    assert refused.returncode == 2 and "--reason is required" in refused.stderr

    opened = procs.run("breaker", "open", "--reason", "disk swap")
    assert opened.returncode == 0 and "OPEN (forced)" in opened.stdout
    load = procs.start("load", "--users", "1", "--bets", "10", "--json", "--quiet")
    store = BreakerStore(redis_client, BreakerLimits())
    wait_for(lambda: load.poll() is None and redis_client.xlen("betstream:intents") == 0
             and store.load().breaker.state == "open", 10, "the load to be held back")
    status = json.loads(procs.run("breaker", "status", "--json").stdout)
    assert status["state"] == "open" and status["forced"] and "disk swap" in status["reason"]

    assert procs.run("breaker", "close", "--reason", "swapped").returncode == 0
    assert load.wait(60) == 0
    summary = json.loads(open(load.log_path).read().strip().splitlines()[-1])
    assert summary["sent"] == 11 and summary["shed"] > 0, summary
    assert redis_client.xlen("betstream:intents") == 11, "everything was sent after all"
    reasons = [t["reason"] for t in store.transitions(10)]
    assert reasons[:2] == ["forced: swapped", "forced: disk swap"], "both forces recorded"
