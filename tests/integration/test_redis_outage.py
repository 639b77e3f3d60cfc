"""Redis vanishing under the writer, the breaker and the producers.

Before: a lease renewal that met a dead Redis ended the writer process; the breaker
forgot failures it could not save; ``betstream load`` exited on the first refused XADD.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producer.breaker_state import BreakerLimits
from producer.client import Producer
from producer.contract import new_deposit
from producer.journal import Journal, JournaledProducer, read_journal
from producer.load import LoadPlan, run_load
from producer.signing import Keyring
from tests.conftest import Procs, RedisServer, private_redis_server, wait_for
from tests.support import drained, query
from workers.adapters.breaker_store import BreakerStore
from workers.adapters.ledger_store import Store
from workers.settings import Settings
from workers.writer.batch_writer import Writer
from workers.writer.breaker_hook import BreakerHook
from workers.writer.hooks import Hook


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """These tests kill and restart Redis: each has a server of its own."""
    yield from private_redis_server(tmp_path / "redis")


class Retries(Hook):
    def __init__(self) -> None:
        self.steps: list[str] = []

    def on_retry(self, what: str, error: Exception, attempt: int, delay_ms: int) -> None:
        self.steps.append(what)


def test_a_lease_renewal_meeting_a_dead_redis_is_retried_not_fatal(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring, producer: Producer,
        tmp_path: Path) -> None:
    hooks = Retries()
    writer = Writer(settings, redis_client, Store(settings.db, 1000, 0), keyring, hooks, "w")
    real_renew, failures = writer.lease.renew, [2]

    def renew() -> bool:  # the first two renewals meet a Redis that is restarting
        if failures[0]:
            failures[0] -= 1
            raise redis.ConnectionError("Connection refused (injected)")
        return real_renew()

    writer.lease.renew = renew  # type: ignore[method-assign]
    stop, crashed = threading.Event(), []

    def serve() -> None:
        try:
            writer.run(stop)
        except Exception as exc:  # noqa: BLE001 - the regression: it used to escape
            crashed.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        wait_for(lambda: "renew_lease" in hooks.steps or crashed, 20, "a renewal to fail")
        deposit = new_deposit(3, 500)
        producer.submit(deposit)
        wait_for(lambda: drained(redis_client) or crashed, 20, "the writer to commit")
        assert not crashed, f"the writer died: {crashed!r}"
        assert query(settings.db, "SELECT status FROM outcomes WHERE id = ?",
                     (deposit.id,)) == [("accepted",)]
    finally:
        stop.set()
        thread.join(10)
        writer.close()


class FlakyStore(BreakerStore):
    """A breaker store whose Redis is away while ``down`` is set."""

    down = False

    def load(self):
        if self.down:
            raise redis.ConnectionError("Error 111 connecting (injected)")
        return super().load()

    def save(self, expected_version, b):
        if self.down:
            raise redis.ConnectionError("Error 111 connecting (injected)")
        return super().save(expected_version, b)


def test_the_breaker_opens_while_redis_is_away_and_records_it_when_back(
        redis_client: redis.Redis) -> None:
    limits = BreakerLimits(cooldown_s=60)
    store = FlakyStore(redis_client, limits)
    hook = BreakerHook(store, sync_interval_s=0)
    store.down = True
    for attempt in range(1, 4):
        hook.on_retry("read_new", redis.ConnectionError("Error 111"), attempt, 50)
    assert store.transitions(5) == [], "nothing could be written yet"
    store.down = False
    hook.on_idle()  # the first step after Redis is back
    snap = store.load().breaker
    assert snap.state == "open" and "redis unreachable (read_new)" in snap.reason
    assert [t["state"] for t in store.transitions(5)] == ["open"]


def test_load_rides_out_a_redis_restart_and_journals_only_replies(
        redis_server, redis_client: redis.Redis, keyring: Keyring, tmp_path: Path) -> None:
    # No retries inside redis-py: its own reconnect backoff would otherwise absorb a short
    # restart before the load generator ever saw it.
    client = redis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0))
    journal = Journal(tmp_path / "p.journal")
    producer = JournaledProducer(Producer(client, keyring), journal)
    plan = LoadPlan(users=5, bets=3000, rate=1500, seed=4)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(run_load(producer, plan)))
    thread.start()
    wait_for(lambda: journal.records > 500, 20, "the load to be under way")
    redis_server.kill()
    time.sleep(1.0)  # the outage itself: the load sends every 10 ms meanwhile
    redis_server.start()  # no persistence: the stream starts afresh
    thread.join(60)
    journal.close()
    assert result, "the load finished instead of raising"
    assert result[0].redis_retries > 0 and result[0].sent == 3005
    acks, torn = read_journal(tmp_path / "p.journal")
    assert torn == 0 and len(acks) == 3005, "one line per acknowledged XADD"
    assert {a.entry_id for a in acks[-100:]} <= {
        e.decode() for e, _ in redis_client.xrange("betstream:intents")}


def test_load_gives_up_with_a_clear_error_when_redis_stays_away(
        procs: Procs, env: dict[str, str]) -> None:
    dead = "redis://127.0.0.1:1/0"
    run = procs.run("load", "--users", "1", "--bets", "1", "--quiet", "--redis-wait", "1",
                    BETSTREAM_REDIS_URL=dead)
    assert run.returncode == 3, run.stderr
    assert "Redis unreachable" in run.stderr and "gave up after" in run.stderr
    assert "Traceback" not in run.stderr


def test_backlog_counts_unread_entries_while_redis_forgot_the_lag(
        redis_server, redis_client: redis.Redis) -> None:
    """After an AOF reload XINFO's lag is unknown (nil) until the group reads again: it used
    to read as 0, so health, drain checks and reconcile saw an empty backlog."""
    from workers.adapters.intent_stream import backlog

    redis_server.restart("--appendonly", "yes", "--appendfsync", "always")
    redis_client.flushall()
    redis_client.xgroup_create("betstream:intents", "betstream:writers", id="0",
                               mkstream=True)
    for n in range(10):
        redis_client.xadd("betstream:intents", {"n": n})
    redis_client.xreadgroup("betstream:writers", "w", {"betstream:intents": ">"}, count=4)
    assert backlog(redis_client) == (4, 6)
    redis_server.restart()  # SIGKILL, then the same AOF
    group = redis_client.xinfo_groups("betstream:intents")[0]
    assert group["lag"] is None, "Redis 7 forgets the lag on reload (the premise)"
    assert backlog(redis_client) == (4, 6)


def test_backlog_ignores_a_lag_counter_stuck_after_reloads(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the full torture run: after 5 AOF reloads XINFO said lag 20133 while nothing
    lay after the last delivered id; reconcile then refused forever ("not drained yet")."""
    from workers.adapters import intent_stream as streams
    last = redis_client.xadd("betstream:intents", {"n": 1}).decode()
    stuck = {"name": b"betstream:writers", "pending": 0, "lag": 20133,
             "last-delivered-id": last.encode()}
    monkeypatch.setattr(streams, "_writers_group", lambda client: stuck)
    assert streams.backlog(redis_client) == (0, 0)
    redis_client.xadd("betstream:intents", {"n": 2})
    assert streams.backlog(redis_client) == (0, 20133), "a real backlog keeps Redis' count"
