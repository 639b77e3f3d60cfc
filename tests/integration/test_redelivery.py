"""A writer that dies between COMMIT and XACK: the next one re-publishes, never re-applies."""

from __future__ import annotations

import threading

import redis

from producer.contract import new_bet, new_deposit
from producer.signing import Keyring
from tests.support import balances, confirmations, deliver_confirmations, query
from workers.adapters.ledger_store import Store
from workers.settings import Settings
from workers.writer.batch_writer import Writer
from workers.writer.hooks import Hook


def _writer(settings: Settings, client: redis.Redis, keyring: Keyring, name: str) -> Writer:
    store = Store(settings.db, settings.sqlite_busy_timeout_ms)
    return Writer(settings, client, store, keyring, Hook(), consumer=name)


def test_committed_but_unacked_batch_is_republished_not_reapplied(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring, producer) -> None:
    deposit, bet = new_deposit(3, 500), new_bet(3, 200, "cup", "away", "3.00")
    producer.submit_many([deposit, bet])

    first = _writer(settings, redis_client, keyring, "first")
    first.stream.ensure_group()
    assert first.try_lead()
    entries = first.stream.read_new(first.lease.owner)
    first.commit(first.source.admit(entries), threading.Event())  # COMMIT ... and the process "dies" here
    first.lease.release()
    assert confirmations(redis_client) == [], "nothing was confirmed before the crash"

    second = _writer(settings, redis_client, keyring, "second")
    stop = threading.Event()
    thread = threading.Thread(target=second.run, args=(stop,))
    thread.start()
    try:
        from tests.conftest import wait_for
        def published() -> bool:
            deliver_confirmations(redis_client, settings)
            return len(confirmations(redis_client)) == 2

        wait_for(published, 20, "the re-published outcomes")
        wait_for(lambda: redis_client.xpending("betstream:intents",
                                               "betstream:writers")["pending"] == 0,
                 20, "the second writer to acknowledge the redelivered entries")
    finally:
        stop.set()
        thread.join(10)

    assert balances(settings.db)[3] == 300, "the bet was applied once"
    assert query(settings.db, "SELECT COUNT(*) FROM outcomes")[0][0] == 2
    seqs = sorted(m["seq"] for m in confirmations(redis_client))
    assert seqs == [1, 2], "the stored outcomes (original seq) were confirmed"
    assert redis_client.xpending("betstream:intents", "betstream:writers")["pending"] == 0
