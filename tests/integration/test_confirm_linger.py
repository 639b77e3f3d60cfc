"""When confirmations queue up, the writer makes fewer, bigger batches (one job each).

Every batch is one RQ job and RQ's per-job cost caps the confirmer: at a steady 3,000/s a
fast writer's small batches kept confirmations waiting for seconds. With jobs waiting, the
writer now waits ``CONFIRM_LINGER_MS`` before reading a batch that is not full.
"""

from __future__ import annotations

import threading
import time

import redis

from producer.client import Producer
from producer.contract import new_deposit
from producer.signing import Keyring
from tests.conftest import wait_for
from tests.support import drained, query, writer_in_process
from workers.settings import Settings, load_settings

INTENTS = 240
SPACING_S = 0.005  # a steady trickle of ~1.2 s: never a full batch
LINGER_MS = 200


def _batches_for_a_trickle(producer: Producer, redis_client: redis.Redis, keyring: Keyring,
                           **settings: int) -> tuple[int, float]:
    s = load_settings(batch_wait_ms=5, **settings)
    writer, store = writer_in_process(s, keyring, "w")
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: writer.lease.holder() == writer.lease.owner, 10, "the writer to lead")
        started = time.monotonic()
        for n in range(INTENTS):  # nobody confirms: the jobs queue up behind the writer
            producer.submit(new_deposit(1 + n % 10, 1))
            time.sleep(SPACING_S)
        wait_for(lambda: drained(redis_client), 30, "the writer to drain the trickle")
        took_s = time.monotonic() - started
        assert query(s.db, "SELECT COUNT(*) FROM outcomes") == [(INTENTS,)]
        return query(s.db, "SELECT COUNT(*) FROM batches")[0][0], took_s
    finally:
        stop.set()
        thread.join(10)
        writer.close()


def test_with_confirmations_waiting_the_writer_lingers_and_batches_grow(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring,
        producer: Producer) -> None:
    batches, took_s = _batches_for_a_trickle(producer, redis_client, keyring,
                                             confirm_linger_ms=LINGER_MS,
                                             confirm_jobs_waiting_max=2)
    # Two batches before two jobs wait, then at most one per linger (plus the last one).
    assert batches <= 3 + took_s / (LINGER_MS / 1000), (batches, took_s)
    redis_client.flushall()  # a fresh stream and ledger for the second run
    settings.db.unlink()
    for suffix in ("-wal", "-shm"):
        settings.db.with_name(settings.db.name + suffix).unlink(missing_ok=True)
    eager, _ = _batches_for_a_trickle(producer, redis_client, keyring,
                                      confirm_jobs_waiting_max=1_000_000)
    assert eager >= 2 * batches, f"without lingering: {eager} batches, with: {batches}"
    print(f"batches with lingering {batches} ({took_s:.1f} s), without {eager}")
