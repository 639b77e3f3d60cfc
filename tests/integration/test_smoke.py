"""The writer process drains a small load and the audit passes."""

from __future__ import annotations

import redis

from producer.contract import new_bet, new_deposit
from tests.conftest import Procs, wait_for
from tests.support import drained, outcome_of


def test_writer_commits_a_deposit_and_a_bet(procs: Procs, producer, redis_client: redis.Redis,
                                            env: dict[str, str]) -> None:
    deposit = new_deposit(7, 1_000)
    bet = new_bet(7, 250, "final", "home", "2.50")
    producer.submit_many([deposit, bet])
    procs.start("writer")
    wait_for(lambda: drained(redis_client), 30, "the writer to drain the stream")
    db = env["BETSTREAM_DB"]
    assert outcome_of(db, deposit.id)["balance"] == 1_000
    assert outcome_of(db, bet.id) == {"status": "accepted", "reason": None, "balance": 750,
                                      "seq": 2}
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_health_reports_the_leading_writer(procs: Procs, redis_client: redis.Redis) -> None:
    """Operators (and the gateway later) see whether a writer is leading."""
    before = procs.run("health")
    assert before.returncode == 1 and "no writer is leading" in before.stdout
    writer = procs.start("writer")
    wait_for(lambda: procs.run("health").returncode == 0, 30, "a healthy writer")
    assert f"-{writer.pid}" in procs.run("health").stdout
