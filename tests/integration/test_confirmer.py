"""The confirmer publishes from the ledger: what SQLite committed reaches the confirmations
stream even when Redis loses its data or the confirmer is killed, and health says when
confirmations wait."""

from __future__ import annotations

import json
import signal
import time

import redis

from producer import constants as c
from producer.client import Producer
from producer.contract import new_deposit
from tests.conftest import Procs, wait_for
from tests.support import confirmations, query

LAG_MAX_MS = 1_000  # health's limit in these tests (default 5,000)
FAST = {"BETSTREAM_CONFIRM_LAG_MAX_MS": str(LAG_MAX_MS), "BETSTREAM_CONFIRM_LEASE_MS": "1000"}


def committed_ids(db: str) -> set[str]:
    return {i for (i,) in query(db, "SELECT id FROM outcomes")}


def published_ids(client: redis.Redis) -> set[str]:
    return {m["id"] for m in confirmations(client)}


def health(procs: Procs) -> dict:
    run = procs.run("health", "--json", **FAST)
    report = json.loads(run.stdout)
    assert run.returncode == (0 if report["ok"] else 1), run.stdout + run.stderr
    return report


def deposits(producer: Producer, first_user: int, n: int) -> set[str]:
    intents = [new_deposit(first_user + i, 10) for i in range(n)]
    producer.submit_many(intents)
    return {i.id for i in intents}


def confirmed_start(procs: Procs, producer: Producer, client: redis.Redis,
                    first_user: int, n: int) -> tuple:
    """Writer and confirmer running, and ``n`` deposits confirmed: (confirmer, their ids)."""
    procs.start("writer", **FAST)
    confirmer = procs.start("confirmer", **FAST)
    ids = deposits(producer, first_user, n)
    wait_for(lambda: ids <= published_ids(client), 20, "the first confirmations")
    return confirmer, ids


def test_a_flushall_while_the_confirmer_is_paused_loses_no_confirmation(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    confirmer, before = confirmed_start(procs, producer, redis_client, 100, 20)

    confirmer.send_signal(signal.SIGSTOP)
    try:
        during = deposits(producer, 200, 50)
        wait_for(lambda: during <= committed_ids(db), 20, "the 50 to be committed")
        redis_client.flushall()  # Redis loses everything: streams, jobs, records
    finally:
        confirmer.send_signal(signal.SIGCONT)
    started = time.monotonic()
    wait_for(lambda: before | during <= published_ids(redis_client), 30,
             "every committed outcome to be on the stream again")
    assert time.monotonic() - started < 30
    assert committed_ids(db) <= published_ids(redis_client)


def test_a_killed_confirmer_is_made_good_within_10_s_of_one_running_again(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    confirmer, first = confirmed_start(procs, producer, redis_client, 300, 10)
    confirmer.send_signal(signal.SIGKILL)
    confirmer.wait(10)
    waiting = deposits(producer, 400, 30)
    wait_for(lambda: waiting <= committed_ids(env["BETSTREAM_DB"]), 20, "the 30 committed")
    assert not waiting & published_ids(redis_client), "no confirmer ran meanwhile"
    procs.start("confirmer", **FAST)
    started = time.monotonic()
    wait_for(lambda: waiting <= published_ids(redis_client), 10,
             "the waiting outcomes to be published")
    assert time.monotonic() - started < 10


def test_health_turns_unhealthy_while_outcomes_wait_and_healthy_once_they_flow(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    confirmer, first = confirmed_start(procs, producer, redis_client, 500, 5)
    wait_for(lambda: health(procs)["ok"], 20, "health to be ok")

    confirmer.send_signal(signal.SIGSTOP)
    try:
        deposits(producer, 600, 5)
        report = wait_for(lambda: (lambda r: None if r["ok"] else r)(health(procs)),
                          LAG_MAX_MS / 1000 + 10, "health to say outcomes wait")
        assert report["confirmer"]["waiting_ms"] > LAG_MAX_MS
        assert report["confirmer"]["published_seq"] < report["confirmer"]["committed_seq"]
    finally:
        confirmer.send_signal(signal.SIGCONT)
    wait_for(lambda: health(procs)["ok"], 10, "health to be ok once confirmations flow")

    redis_client.flushall()  # a Redis restart without its data: ok again once they flow
    wait_for(lambda: health(procs)["ok"], 10, "health to be ok again after the flush")


def test_confirmations_redis_lost_at_its_tail_are_published_again(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    """A Redis restart that loses its last writes (AOF everysec and a power cut) takes the
    confirmer's record back with the confirmations it had published after it: the
    confirmer finds its record behind it and publishes from there again."""
    confirmer, first = confirmed_start(procs, producer, redis_client, 700, 20)
    confirmer.send_signal(signal.SIGSTOP)
    try:
        entries = redis_client.xrange(c.STREAM_CONFIRMATIONS)
        kept, lost = entries[:5], entries[5:]
        redis_client.xdel(c.STREAM_CONFIRMATIONS, *[eid for eid, _ in lost])
        last_kept = json.loads(kept[-1][1][b"outcome"])["seq"]
        redis_client.hset(c.KEY_CONFIRMER_PROGRESS, "published_seq", last_kept)
        assert not first <= published_ids(redis_client)
    finally:
        confirmer.send_signal(signal.SIGCONT)
    deposits(producer, 800, 1)  # the next round notices, with or without new outcomes
    wait_for(lambda: first <= published_ids(redis_client), 20,
             "the lost confirmations to be published again")
