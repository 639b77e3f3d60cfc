"""Entries a fenced-out writer read after losing the lead are not left waiting behind a
busy stream (found by the split-brain torture scenario's analysis).

A writer frozen between its lease check and its XREADGROUP wakes up and reads: the
entries it pulls in land in its own pending list after the new leader claimed everything,
and its commit is refused. The new leader used to look for such stranded entries only when
its stream went idle, so under sustained load they waited, out of order, until the load
stopped (past the freshness window they would turn ``stale``)."""

from __future__ import annotations

import threading

import redis

from producer.client import Producer
from producer.contract import new_deposit
from producer.errors import FencedOut
from producer.signing import Keyring
from tests.conftest import wait_for
from tests.support import drained, query, writer_in_process
from workers.settings import Settings, load_settings

BACKLOG = 60_000  # intents: a few seconds of work for the writer, several 500 ms lease periods
BATCH = 500


def test_entries_stranded_by_a_fenced_out_writer_are_taken_over_under_load(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring,
        producer: Producer) -> None:
    s = load_settings(lease_ms=500, batch_wait_ms=5, batch_size_max=BATCH)
    zombie, zombie_store = writer_in_process(s, keyring, "zombie")
    fresh, fresh_store = writer_in_process(s, keyring, "fresh")
    stop = threading.Event()
    thread = threading.Thread(target=fresh.run, args=(stop,), daemon=True)
    try:
        zombie.stream.ensure_group()
        assert zombie._try_lead()
        zombie.lease.release()  # ... and then it froze; the other writer leads and serves
        # The backlog is there before the new writer starts: a writer that keeps up with the
        # producer would otherwise have drained nearly everything before the zombie reads.
        producer.submit_many(new_deposit(1 + n % 500, 1) for n in range(BACKLOG))
        thread.start()
        wait_for(lambda: fresh.lease.holder() == fresh.lease.owner, 10, "the new writer to lead")
        wait_for(lambda: query(s.db, "SELECT COUNT(*) FROM outcomes")[0][0] > 0, 30,
                 "the new writer to be busy with the backlog")
        entries = zombie.stream.read_new()  # the zombie wakes up and reads
        assert entries, "the zombie pulled entries into its own pending list"
        try:
            zombie.process(entries, threading.Event())
        except FencedOut:
            pass
        else:
            raise AssertionError("the zombie committed with a stale epoch")

        wait_for(lambda: drained(redis_client), 120, "the new writer to drain everything")
        seqs = dict(query(s.db, "SELECT entry_id, seq FROM outcomes"))
        assert len(seqs) == BACKLOG, "every intent has its outcome"
        stranded_last = max(seqs[eid] for eid, _ in entries)
        assert stranded_last < BACKLOG - 2 * BATCH, (
            "the stranded entries were taken over while the backlog still flowed, not after "
            f"it (last one at seq {stranded_last} of {BACKLOG})")
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        zombie_store.close()
        fresh_store.close()
