"""Fault injection on the real store under a real writer process: the breaker opens,
producers are shed with retry_after, nothing accepted is lost, and it closes only after
the (shortened) stability window, without flapping."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from producer.breaker_state import BreakerLimits
from producer.client import Producer
from producer.contract import new_bet, new_deposit
from producer.errors import BreakerOpen
from producer.signing import Keyring
from tests.conftest import Procs, wait_for
from tests.support import drained, query
from workers.adapters.breaker_store import BreakerStore

STABILITY_S = 3
BREAKER_ENV = {
    "BETSTREAM_SQLITE_BUSY_TIMEOUT_MS": "100", "BETSTREAM_BREAKER_FAILURES_MAX": "3",
    "BETSTREAM_BREAKER_COOLDOWN_S": "1", "BETSTREAM_BREAKER_STABILITY_S": str(STABILITY_S),
    "BETSTREAM_BREAKER_SYNC_MS": "50", "BETSTREAM_RETRY_BACKOFF_MAX_MS": "300",
    "BETSTREAM_BREAKER_COMMIT_MAX_MS": "1500",
}


def state(client: redis.Redis) -> str:
    return BreakerStore(client, BreakerLimits()).load().breaker.state


def transitions(client: redis.Redis) -> list[str]:
    return [t["state"] for t in reversed(BreakerStore(client, BreakerLimits()).transitions(1000))]


@contextmanager
def write_lock(db: str) -> Iterator[None]:
    """Another process-like connection holding SQLite's write lock."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


class Pusher:
    """A producer sending bets continuously; records what Redis accepted and what was shed."""

    def __init__(self, client: redis.Redis, keyring: Keyring) -> None:
        self.producer = Producer(client, keyring)
        self.accepted: list[str] = []
        self.shed: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            bet = new_bet(1, 1, "m", "s", "2.00")
            try:
                self.producer.submit(bet)
                self.accepted.append(bet.id)
            except BreakerOpen as exc:
                self.shed.append(exc.retry_after)
            self._stop.wait(0.01)

    def __enter__(self) -> Pusher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No more sends: ``accepted`` is final once this returns."""
        self._stop.set()
        self._thread.join(10)


def start(procs: Procs, producer: Producer, redis_client: redis.Redis, **env: str) -> str:
    producer.submit(new_deposit(1, 10**9))
    procs.start("writer", **{**BREAKER_ENV, **env})
    wait_for(lambda: drained(redis_client), 30, "the deposit to be committed")
    return procs.env["BETSTREAM_DB"]


def check_recovery(procs: Procs, redis_client: redis.Redis, db: str, pusher: Pusher) -> None:
    wait_for(lambda: state(redis_client) == "closed", 60, "the breaker to close again")
    # Stopped first: an intent sent between the drain and the query below was counted as
    # lost (seen once in CI), though the writer had simply not read it yet.
    pusher.stop()
    wait_for(lambda: drained(redis_client), 60, "the backlog to drain")
    outcomes = {i for (i,) in query(db, "SELECT id FROM outcomes")}
    assert set(pusher.accepted) <= outcomes, "every intent Redis accepted has an outcome"
    assert pusher.shed and min(pusher.shed) > 0, "producers were shed with a retry_after"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout


def assert_one_clean_cycle(client: redis.Redis) -> None:
    log = BreakerStore(client, BreakerLimits()).transitions(1000)[::-1]
    assert [t["state"] for t in log] == ["open", "half_open", "closed"], "no flapping"
    half, closed = int(log[1]["since_ms"]), int(log[2]["since_ms"])
    assert closed - half >= STABILITY_S * 1000, "closed only after the stability window"


def test_write_lock_held_opens_sheds_and_recovers(
        procs: Procs, producer: Producer, redis_client: redis.Redis, keyring: Keyring) -> None:
    db = start(procs, producer, redis_client)
    with Pusher(redis_client, keyring) as pusher:
        with write_lock(db):
            wait_for(lambda: state(redis_client) == "open", 20, "the breaker to open")
            with pytest.raises(BreakerOpen) as refused:
                wait_for(lambda: producer.submit(new_deposit(1, 1)) and False, 5, "a refusal")
            assert refused.value.retry_after > 0
            time.sleep(2)  # the fault lasts a while (the point of the test, not a wait)
        check_recovery(procs, redis_client, db, pusher)
    assert_one_clean_cycle(redis_client)


def test_read_only_file_opens_sheds_and_recovers(
        procs: Procs, producer: Producer, redis_client: redis.Redis, keyring: Keyring) -> None:
    """Immutable files (even root cannot write): the restarted writer cannot open the
    ledger, keeps retrying instead of exiting, and the breaker sheds until it can."""
    db = start(procs, producer, redis_client)
    writer = procs.started[-1]
    writer.kill()
    writer.wait(10)
    files = [p for p in (db, db + "-wal", db + "-shm") if Path(p).exists()]
    if subprocess.run(["chattr", "+i", files[0]], capture_output=True).returncode != 0:
        pytest.skip("this filesystem cannot make a file immutable (chattr +i)")
    try:
        subprocess.run(["chattr", "+i", *files[1:]], check=True)
        procs.start("writer", **BREAKER_ENV, BETSTREAM_LEASE_MS="1000")
        with Pusher(redis_client, keyring) as pusher:
            wait_for(lambda: state(redis_client) == "open", 20, "the breaker to open")
            time.sleep(1)  # the fault lasts a while
            subprocess.run(["chattr", "-i", *files], check=True)
            check_recovery(procs, redis_client, db, pusher)
    finally:
        subprocess.run(["chattr", "-i", *files], capture_output=True)
    assert_one_clean_cycle(redis_client)


def test_slow_commits_open_it(procs: Procs, producer: Producer, redis_client: redis.Redis,
                              keyring: Keyring) -> None:
    db = start(procs, producer, redis_client, BETSTREAM_BREAKER_COMMIT_MAX_MS="150",
               BETSTREAM_SQLITE_BUSY_TIMEOUT_MS="5000")
    stop = threading.Event()
    contender = threading.Thread(target=hold_lock_in_bursts, args=(db, stop, 0.3, 0.05))
    with Pusher(redis_client, keyring) as pusher:
        contender.start()
        try:
            wait_for(lambda: state(redis_client) == "open", 20, "a slow commit to open it")
        finally:
            stop.set()
            contender.join(10)
        check_recovery(procs, redis_client, db, pusher)
    assert "commit took" in BreakerStore(redis_client, BreakerLimits()).transitions(10)[-1]["reason"]


def hold_lock_in_bursts(db: str, stop: threading.Event, hold_s: float, gap_s: float) -> None:
    while not stop.is_set():
        with write_lock(db):
            stop.wait(hold_s)
        stop.wait(gap_s)


def test_flapping_store_opens_a_bounded_number_of_times(
        procs: Procs, producer: Producer, redis_client: redis.Redis, keyring: Keyring) -> None:
    """Failing 2 s / healthy 2 s for 30 s: 8 failing spells, far fewer OPEN periods."""
    db = start(procs, producer, redis_client)
    with Pusher(redis_client, keyring) as pusher:
        deadline = time.monotonic() + 30
        spells = 0
        while time.monotonic() < deadline:
            with write_lock(db):
                spells += 1
                time.sleep(2)
            time.sleep(2)
        opens = transitions(redis_client).count("open")
        assert spells >= 7
        assert 1 <= opens <= 5, f"{opens} OPEN transitions for {spells} failing spells"
        check_recovery(procs, redis_client, db, pusher)


def test_intents_that_waited_out_an_outage_are_rejected_stale_not_dropped(
        procs: Procs, producer: Producer, redis_client: redis.Redis, keyring: Keyring) -> None:
    db = start(procs, producer, redis_client, BETSTREAM_INTENT_AGE_MAX_MS="2000",
               BETSTREAM_BREAKER_BACKLOG_AGE_MAX_MS="1500")
    unshed = Producer(redis_client, keyring, shed=False)  # e.g. sent just before the trip
    with write_lock(db):
        bets = [new_bet(1, 1, "m", "s", "2.00") for _ in range(10)]
        unshed.submit_many(bets)
        time.sleep(3)  # the outage outlasts the freshness window (the point of the test)
    wait_for(lambda: drained(redis_client), 30, "the backlog to drain")
    rows = query(db, "SELECT status, reason, detail FROM outcomes WHERE id IN (%s)"
                 % ",".join("?" * len(bets)), tuple(b.id for b in bets))
    assert len(rows) == 10, "each got exactly one outcome"
    assert {(s, r) for s, r, _ in rows} == {("rejected", "stale")}
    assert all("too old" in d for _, _, d in rows), "with the reason spelled out"
