"""One writer at a time: a standby writer waits, takes over after a SIGKILL without losing
or doubling anything, and a writer that lost its epoch can never commit (fencing)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from producer import constants as c
from producer.client import Producer
from producer.contract import intent_body, new_bet, new_deposit, now_ms
from producer.errors import FencedOut
from producer.signing import Keyring
from tests.conftest import Procs, wait_for
from tests.support import balances, drained, log_events, query, writer_in_process
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import build_batch
from workers.core.decision import SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.settings import Settings, load_settings

WRITER_ENV = {
    "BETSTREAM_LEASE_MS": "1000",
    "BETSTREAM_STANDBY_POLL_MS": "100",
    "BETSTREAM_SQLITE_BUSY_TIMEOUT_MS": "100",
    "BETSTREAM_RETRY_BACKOFF_MIN_MS": "20",
    "BETSTREAM_RETRY_BACKOFF_MAX_MS": "200",
    "BETSTREAM_BATCH_SIZE_MAX": "40",
}


def health(client: redis.Redis, consumer: str) -> dict[str, str]:
    raw = client.hgetall(f"{c.KEY_WRITER_HEALTH}:{consumer}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def lease_holder(client: redis.Redis) -> str:
    value = client.get(c.KEY_WRITER_LEASE)
    return value.decode() if value else ""


def batch_epochs(db: Path | str) -> set[int]:
    return {r[0] for r in query(db, "SELECT DISTINCT epoch FROM batches")}


def pending_by_consumer(client: redis.Redis) -> dict[str, int]:
    info = client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)
    return {(x["name"].decode() if isinstance(x["name"], bytes) else x["name"]): int(x["pending"])
            for x in info.get("consumers") or []}


def leading_claims(log_path: str) -> list[int]:
    """pending_claimed of every writer.leading event in a writer's JSON log."""
    return [int(e["pending_claimed"]) for e in log_events(log_path, "writer.leading")]


def funded_load(first_user: int, users: int, bets_per_user: int) -> tuple[list, dict[int, int]]:
    """Deposits then affordable bets: every intent must be accepted exactly once."""
    intents, expected = [], {}
    for user in range(first_user, first_user + users):
        intents.append(new_deposit(user, 10_000))
        expected[user] = 10_000
    for n in range(bets_per_user):
        for user in range(first_user, first_user + users):
            stake = 10 + n
            intents.append(new_bet(user, stake, f"match-{n % 3}", "home", "1.90"))
            expected[user] -= stake
    return intents, expected


def test_standby_writer_takes_over_after_sigkill_nothing_lost_nothing_doubled(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    """Operators run two writers for availability: only the first commits while it lives;
    after it is SIGKILLed mid-batch, the standby leads within the lease time, commits the
    stranded entries once, and the ledger audits clean."""
    db = env["BETSTREAM_DB"]
    first = procs.start("writer", "--consumer", "w1", name="w1", **WRITER_ENV)
    wait_for(lambda: health(redis_client, "w1").get("state") == "leading", 15,
             "the first writer to lead")
    second = procs.start("writer", "--consumer", "w2", name="w2", **WRITER_ENV)
    wait_for(lambda: health(redis_client, "w2").get("state") == "standby", 15,
             "the second writer to report standby")
    epoch1 = int(health(redis_client, "w1")["epoch"])
    assert lease_holder(redis_client).startswith("w1:")

    # Phase 1: both alive, only the first commits.
    phase1, expected = funded_load(1, 20, 5)
    producer.submit_many(phase1)
    holders: set[str] = set()

    def drained_watching_lease() -> bool:
        holders.add(lease_holder(redis_client).split(":", 1)[0])
        return drained(redis_client)

    wait_for(drained_watching_lease, 20, "the first writer to drain phase 1")
    assert holders == {"w1"}, f"the lease changed hands while w1 lived: {holders}"
    assert batch_epochs(db) == {epoch1}
    assert health(redis_client, "w2")["state"] == "standby"
    assert second.poll() is None

    # Phase 2: hold the ledger's write lock so w1 reads a batch, claims its nonces, and
    # cannot commit; then SIGKILL it with the batch pending.
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        phase2, expected2 = funded_load(100, 20, 4)
        pipe = redis_client.pipeline(transaction=True)  # one MULTI: w1 reads a full batch
        for intent in phase2:
            pipe.xadd(c.STREAM_INTENTS, producer.fields_for(intent))
        pipe.execute()
        expected.update(expected2)
        # The batch it cannot commit, the next one read ahead while that commit ran, and
        # the one after, which the admission child reads once it has handed the next over.
        batches_held = min(len(phase2), 3 * int(WRITER_ENV["BETSTREAM_BATCH_SIZE_MAX"]))
        wait_for(lambda: pending_by_consumer(redis_client).get("w1", 0) == batches_held, 15,
                 "w1 to hold a batch it cannot commit and the two after it")
        stuck = pending_by_consumer(redis_client)["w1"]
        first_nonce = c.nonce_key("cashier", phase2[0].nonce)
        wait_for(lambda: redis_client.exists(first_nonce), 15,
                 "w1 to claim the nonces of its stuck batch")
        assert batch_epochs(db) == {epoch1}, "nobody else committed while w1 lived"
        first.kill()
        first.wait(10)
        killed_at = time.monotonic()
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    wait_for(lambda: lease_holder(redis_client).startswith("w2:"), 15,
             "the standby to take the lease")
    took_over_s = time.monotonic() - killed_at
    wait_for(lambda: health(redis_client, "w2").get("state") == "leading", 15,
             "the standby to lead")
    epoch2 = int(health(redis_client, "w2")["epoch"])
    assert epoch2 > epoch1
    assert took_over_s < 5, f"takeover took {took_over_s:.1f}s with a 1 s lease"
    claimed = wait_for(lambda: leading_claims(second.log_path), 10, "w2's writer.leading log")
    assert claimed == [stuck], "w2 claimed exactly the batch w1 was holding"
    wait_for(lambda: drained(redis_client), 30, "the second writer to drain everything")

    all_ids = [i.id for i in phase1 + phase2]
    rows = query(db, "SELECT id, status, reason FROM outcomes")
    per_id = Counter(r[0] for r in rows)
    assert set(per_id) == set(all_ids), "every intent has an outcome, and only those"
    assert max(per_id.values()) == 1, "no intent has two outcomes"
    assert {(r[1], r[2]) for r in rows} == {("accepted", None)}, "no replay, nothing stale"
    ledger = Counter(r[0] for r in query(db, "SELECT txn_id FROM transaction_ledger"))
    assert set(ledger) == set(all_ids) and set(ledger.values()) == {2}, "one effect each"
    got = balances(db)
    assert {u: got[u] for u in expected} == expected
    assert batch_epochs(db) == {epoch1, epoch2}
    phase2_epochs = {r[0] for r in query(
        db, "SELECT DISTINCT b.epoch FROM batches b JOIN outcomes o ON o.batch_no = b.batch_no "
            "WHERE o.id IN (%s)" % ",".join("?" * len(phase2)), tuple(i.id for i in phase2))}
    assert phase2_epochs == {epoch2}
    assert pending_by_consumer(redis_client) == {}
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "all invariants hold" in audit.stdout


def test_clean_stop_hands_the_lease_over_at_once(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    """SIGTERM (a deploy) releases the lease: the standby leads without waiting out a long
    lease, and intents sent during the handover are committed once."""
    slow_lease = {**WRITER_ENV, "BETSTREAM_LEASE_MS": "20000"}
    first = procs.start("writer", "--consumer", "w1", name="w1", **slow_lease)
    wait_for(lambda: health(redis_client, "w1").get("state") == "leading", 15, "w1 to lead")
    procs.start("writer", "--consumer", "w2", name="w2", **slow_lease)
    wait_for(lambda: health(redis_client, "w2").get("state") == "standby", 15, "w2 standby")
    before, expected = funded_load(1, 10, 2)
    producer.submit_many(before)
    wait_for(lambda: drained(redis_client), 15, "w1 to drain")

    first.terminate()
    assert first.wait(10) == 0, "a clean stop exits 0"
    stopped = time.monotonic()
    during, expected2 = funded_load(50, 10, 2)
    producer.submit_many(during)
    wait_for(lambda: lease_holder(redis_client).startswith("w2:"), 10, "w2 to take the lease")
    assert time.monotonic() - stopped < 5, "the lease was released, not left to expire (20 s)"
    wait_for(lambda: drained(redis_client), 15, "w2 to drain")
    per_id = Counter(r[0] for r in query(env["BETSTREAM_DB"], "SELECT id FROM outcomes"))
    assert per_id == Counter(i.id for i in before + during)
    got = balances(env["BETSTREAM_DB"])
    assert {u: got[u] for u in {**expected, **expected2}} == {**expected, **expected2}


def _candidate(user_id: int, amount: int, entry_id: str) -> Candidate:
    intent = new_deposit(user_id, amount)
    body = intent_body(intent)
    return Candidate.of(entry_id, int(entry_id.split("-")[0]), intent,
                        hashlib.sha256(body).digest(), "cashier")


def _counts(db: Path) -> tuple[int, ...]:
    return tuple(query(db, f"SELECT COUNT(*) FROM {t}")[0][0]
                 for t in ("outcomes", "transaction_ledger", "batches", "bets"))


def _batch_for(store: Store, epoch: int, user_id: int, amount: int, entry_id: str):
    book = Book({**dict.fromkeys(SYSTEM_ACCOUNTS, 0), **store.load_balances(SYSTEM_ACCOUNTS),
                 **store.load_balances([user_id])})
    decisions, _ = decide_batch([_candidate(user_id, amount, entry_id)], book)
    return build_batch(decisions, store.heads, epoch, now_ms())


def test_store_with_an_older_epoch_cannot_commit(tmp_path: Path) -> None:
    """A writer whose epoch was taken over is refused at COMMIT and writes nothing, while
    the newer writer commits normally; taking the epoch back flips the roles."""
    db = tmp_path / "fenced.sqlite3"
    a, b = Store(db, 1000), Store(db, 1000)
    try:
        epoch_a = a.bump_epoch()
        stale = _batch_for(a, epoch_a, 7, 500, "1000-0")
        epoch_b = b.bump_epoch()
        assert epoch_b == epoch_a + 1
        before, heads_before = _counts(db), a.heads

        with pytest.raises(FencedOut):
            a.commit(stale)
        assert _counts(db) == before == (0, 0, 0, 0), "the fenced commit wrote nothing"
        assert a.heads == heads_before
        assert 7 not in balances(db)

        b.commit(_batch_for(b, epoch_b, 8, 300, "1001-0"))  # A left no lock behind
        assert balances(db)[8] == 300
        assert query(db, "SELECT epoch FROM batches") == [(epoch_b,)]
        with pytest.raises(FencedOut):
            a.commit(_batch_for(a, epoch_a, 7, 500, "1002-0"))  # rebuilt, still fenced
        assert 7 not in balances(db)

        epoch_a2 = a.bump_epoch()
        assert epoch_a2 == epoch_b + 1
        with pytest.raises(FencedOut):
            b.commit(_batch_for(b, epoch_b, 9, 100, "1003-0"))
        a.commit(_batch_for(a, epoch_a2, 7, 500, "1004-0"))
        assert balances(db)[7] == 500 and 9 not in balances(db)
        assert [r[0] for r in query(db, "SELECT epoch FROM batches ORDER BY batch_no")] == [
            epoch_b, epoch_a2]
    finally:
        a.close()
        b.close()


def test_paused_writer_that_lost_its_lease_is_fenced_out(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring,
        producer: Producer) -> None:
    """A writer frozen mid-batch (GC pause, SIGSTOP) whose lease expired wakes up and tries
    to commit: the fencing epoch refuses it, and the new writer commits everything once."""
    s = load_settings(lease_ms=500, batch_wait_ms=5)
    zombie, zombie_store = writer_in_process(s, keyring, "zombie")
    fresh, fresh_store = writer_in_process(s, keyring, "fresh")
    stop = threading.Event()
    thread = threading.Thread(target=fresh.run, args=(stop,), daemon=True)
    try:
        zombie.stream.ensure_group()
        assert zombie.try_lead()
        intents = [new_deposit(u, 1_000) for u in range(1, 11)]
        intents += [new_bet(u, 100, "cup", "away", "3.00") for u in range(1, 11)]
        producer.submit_many(intents)
        entries = zombie.stream.read_new(zombie.lease.owner)
        assert len(entries) == len(intents)

        # ... the zombie freezes here; its lease runs out and another writer leads.
        wait_for(lambda: not redis_client.exists(c.KEY_WRITER_LEASE), 5, "the lease to expire")
        assert fresh.try_lead()
        assert fresh.epoch > zombie.epoch

        with pytest.raises(FencedOut):
            zombie.process(zombie.source.admit(entries), threading.Event())
        assert _counts(Path(s.db)) == (0, 0, 0, 0), "the zombie committed nothing"
        assert not zombie.lease.renew(), "the zombie cannot win the lease back by renewing"

        thread.start()
        wait_for(lambda: drained(redis_client), 15, "the new writer to commit the batch")
        per_id = Counter(r[0] for r in query(s.db, "SELECT id FROM outcomes"))
        assert per_id == Counter(i.id for i in intents)
        assert {r[0] for r in query(s.db, "SELECT DISTINCT status FROM outcomes")} == {
            "accepted"}, "the zombie's nonce claims did not make its entries look replayed"
        assert batch_epochs(s.db) == {fresh.epoch}
        assert all(balances(s.db)[u] == 900 for u in range(1, 11))
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        zombie_store.close()
        fresh_store.close()
