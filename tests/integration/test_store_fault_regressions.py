"""Store faults found by the torture tier (tests/torture/test_storage_faults.py), pinned
by small tests against a real writer process."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from producer.client import Producer
from producer.contract import new_bet
from producer.errors import BreakerOpen
from tests.conftest import Procs, wait_for
from tests.integration.test_breaker_faults import BREAKER_ENV, start, state, write_lock
from tests.support import drained, outcome_of

SLOW_LEASE = {"BETSTREAM_LEASE_MS": "4000"}  # the next writer waits in standby meanwhile


def test_a_writer_that_cannot_take_the_epoch_opens_the_breaker(
        procs: Procs, producer: Producer, redis_client: redis.Redis) -> None:
    """A writer (re)started while the ledger is locked (or full, or read-only) cannot take
    the fencing epoch. That is a store fault like a failed commit: the breaker must open
    and shed producers, not let them fill a stream that nobody can commit (it used to stay
    closed, since only failures of the "commit" and "open_store" steps were counted)."""
    db = start(procs, producer, redis_client, **SLOW_LEASE)
    first = procs.started[-1]
    first.kill()
    first.wait(10)
    second = procs.start("writer", **BREAKER_ENV)
    wait_for(lambda: "writer.standby" in Path(second.log_path).read_text(), 20,
             "the new writer to open the ledger and wait for the lease")
    with write_lock(db):  # taken after it opened the file, before it leads
        wait_for(lambda: "cannot take the fencing epoch" in Path(second.log_path).read_text(),
                 20, "the new writer to fail taking the epoch")
        wait_for(lambda: state(redis_client) == "open", 20, "the breaker to open")
        with pytest.raises(BreakerOpen):
            producer.submit(new_bet(1, 1, "m", "s", "2.00"))
    bet = new_bet(1, 1, "m", "s", "2.00")
    wait_for(lambda: state(redis_client) == "closed", 60, "the breaker to close again")
    producer.submit(bet)
    wait_for(lambda: drained(redis_client), 30, "the bet to be committed")
    assert outcome_of(db, bet.id)["status"] == "accepted"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout
