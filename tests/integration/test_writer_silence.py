"""A writer cannot die silently: a watcher opens the breaker once no
writer has shown a sign of life for ``WRITER_SILENT_MAX_MS`` while intents wait, against a
real Redis (beacons written by the writer's own ``HealthBeacon``; the watcher's clock is
injected, so hours of silence take no time)."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producer import constants as c
from producer.breaker_state import CLOSED, OPEN, BreakerLimits
from producer.client import Producer
from producer.contract import new_deposit, now_ms
from producer.errors import BreakerOpen
from producer.signing import Keyring
from tests.conftest import free_port, wait_for
from tests.support import writer_in_process
from workers.adapters.breaker_store import BreakerStore
from workers.adapters.intent_stream import IntentStream
from workers.adapters.writer_health import writer_health
from workers.adapters.writer_silence import WriterSilence
from workers.settings import Settings, load_settings
from workers.writer.hooks import HealthBeacon

MAX_MS = 20_000


@pytest.fixture
def store(redis_client: redis.Redis) -> BreakerStore:
    return BreakerStore(redis_client, BreakerLimits())


def watcher(client: redis.Redis, store: BreakerStore, who: str = "gateway h:1") -> WriterSilence:
    return WriterSilence(client, store, MAX_MS, who)


def leading_beacon(client: redis.Redis, consumer: str = "w1") -> int:
    """A writer's beacon as it takes the lead; returns its beat (ms)."""
    HealthBeacon(client, consumer, ttl_ms=60_000).on_lead(epoch=1, claimed=0)
    return int(client.hget(f"{c.KEY_WRITER_HEALTH}:{consumer}", "beat_ms"))


def waiting_intents(client: redis.Redis, settings: Settings, producer: Producer, n: int) -> None:
    IntentStream(client, settings, "w1").ensure_group()
    for i in range(n):
        producer.submit(new_deposit(100 + i, 500))


def test_no_trip_while_the_beacon_is_fresh(redis_client, settings, producer, store) -> None:
    beat = leading_beacon(redis_client)
    waiting_intents(redis_client, settings, producer, 3)
    w = watcher(redis_client, store)
    assert w.check(beat + MAX_MS - 1) is None
    assert store.load().breaker.state == CLOSED


def test_no_trip_when_nothing_waits(redis_client, settings, producer, store) -> None:
    beat = leading_beacon(redis_client)
    waiting_intents(redis_client, settings, producer, 0)
    w = watcher(redis_client, store)
    assert w.check(beat) is None
    assert w.check(beat + 3_600_000) is None, "a dead writer with nothing to do harms nobody"
    assert store.load().breaker.state == CLOSED


def test_a_silent_writer_with_intents_waiting_opens_the_breaker_once(
        redis_client, settings, producer, keyring: Keyring, store) -> None:
    beat = leading_beacon(redis_client)
    w = watcher(redis_client, store)
    assert w.check(beat) is None
    waiting_intents(redis_client, settings, producer, 57)
    redis_client.delete(f"{c.KEY_WRITER_HEALTH}:w1")  # the beacon expired: its beat is known
    assert w.check(beat + MAX_MS - 1) is None
    tripped = w.check(beat + MAX_MS + 345)
    assert tripped is not None and tripped.state == OPEN and not tripped.forced
    reason = ("writer silent for 20,345 ms with 57 intents waiting (noticed by gateway h:1)")
    assert store.load().breaker == tripped and tripped.reason == reason
    assert writer_health(redis_client).breaker_reason == reason, "health says which"
    assert [t["state"] for t in store.transitions()] == [OPEN]
    with pytest.raises(BreakerOpen, match="writer silent"):
        Producer(redis_client, keyring).submit(new_deposit(7, 100))  # producers shed
    second = watcher(redis_client, store, "standby writer w2")
    assert second.check(beat + MAX_MS + 999) is None  # never counted: no beat seen yet
    assert second.check(beat + 2 * MAX_MS + 999) is None, "already open: tripped once"
    assert w.check(beat + 2 * MAX_MS) is None
    assert len(store.transitions()) == 1


def test_a_forced_breaker_is_left_alone(redis_client, settings, producer, store) -> None:
    beat = leading_beacon(redis_client)
    waiting_intents(redis_client, settings, producer, 2)
    store.force(OPEN, "maintenance")
    forced = store.load().breaker
    w = watcher(redis_client, store)
    assert w.check(beat) is None
    assert w.check(beat + 10 * MAX_MS) is None
    assert store.load().breaker == forced and forced.reason == "forced: maintenance"


def test_a_standby_beacon_is_no_sign_of_life(redis_client, settings, producer, store) -> None:
    """A watcher that never saw a writer alive counts from its first look: none may trip a
    breaker the moment it starts."""
    HealthBeacon(redis_client, "w2", ttl_ms=60_000).on_standby(holder=None)
    waiting_intents(redis_client, settings, producer, 1)
    w = watcher(redis_client, store)
    t = now_ms()
    assert w.check(t) is None
    assert w.check(t + MAX_MS - 1) is None
    assert w.check(t + MAX_MS).state == OPEN


def test_redis_away_is_no_answer_not_an_error(store) -> None:
    away = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # refused at once
    assert WriterSilence(away, BreakerStore(away, BreakerLimits()), MAX_MS, "g").check(0) is None


def test_a_standby_writer_opens_the_breaker_when_the_leader_went_silent(
        redis_client, env, producer, keyring: Keyring, store, monkeypatch) -> None:
    """The lease is still held (the leader hung, or its lease outlives it) and its last
    beat is older than the bound while intents wait: the standby notices."""
    for key, value in env.items():
        if key.startswith("BETSTREAM_"):
            monkeypatch.setenv(key, value)
    s = load_settings(lease_ms=2000, health_ttl_ms=1500, standby_poll_ms=20,
                      writer_silent_max_ms=3000, writer_silence_check_interval_ms=50)
    waiting_intents(redis_client, s, producer, 4)
    redis_client.set(c.KEY_WRITER_LEASE, "writer-hung:00000000", px=60_000)
    redis_client.hset(f"{c.KEY_WRITER_HEALTH}:writer-hung", mapping={
        "state": "leading", "beat_ms": now_ms() - 3 * s.writer_silence_bound_ms})
    writer, ledger = writer_in_process(s, keyring, "writer-standby")
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: store.load().breaker.state == OPEN, 10, "the standby to open it")
    finally:
        stop.set()
        thread.join(10)
        writer.close()
        ledger.close()
    reason = store.load().breaker.reason
    assert "with 4 intents waiting (noticed by standby writer writer-standby)" in reason
    assert redis_client.get(c.KEY_WRITER_LEASE) == b"writer-hung:00000000", "still standby"


def test_a_watcher_that_forgot_counts_afresh(redis_client, settings, producer, store) -> None:
    """A standby writer that led meanwhile forgets the beats it saw before."""
    beat = leading_beacon(redis_client)
    waiting_intents(redis_client, settings, producer, 1)
    w = watcher(redis_client, store)
    assert w.check(beat) is None
    redis_client.delete(f"{c.KEY_WRITER_HEALTH}:w1")
    w.forget()
    assert w.check(beat + 10 * MAX_MS) is None, "its first look again"
    assert w.check(beat + 11 * MAX_MS).state == OPEN
