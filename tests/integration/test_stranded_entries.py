"""Entries stranded in another consumer's pending list are not left waiting behind a busy
stream (found by the split-brain torture scenario's analysis), and a writer that lost the
lead no longer strands any.

A writer frozen between its lease check and a blocking XREADGROUP used to wake up and
read: the entries it pulled in landed in its own pending list after the new leader claimed
everything, and its commit was refused. Every read of new entries is now guarded by the
lease (WATCH/MULTI; the wait for entries is an XREAD that consumes nothing), and after a
failed read the writer reads its own pending entries first. Entries can still be stranded
under another consumer by a writer of an earlier release: the new leader used to look for
them only when its stream went idle, so under sustained load they waited, out of order,
until the load stopped (past the freshness window they would turn ``stale``)."""

from __future__ import annotations

import threading

import pytest
import redis

from producer import constants as c
from producer.client import Producer
from producer.contract import new_bet, new_deposit
from producer.errors import FencedOut, LeaseLost
from producer.signing import Keyring
from tests.conftest import wait_for
from tests.support import drained, query, writer_in_process
from workers.adapters.intent_stream import Entry, _entries
from workers.settings import Settings, load_settings
from workers.writer.batch_writer import Writer

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
        assert zombie.try_lead()
        zombie.lease.release()  # ... and then it froze; the other writer leads and serves
        # The backlog is there before the new writer starts: a writer that keeps up with the
        # producer would otherwise have drained nearly everything before the zombie reads.
        producer.submit_many(new_deposit(1 + n % 500, 1) for n in range(BACKLOG))
        thread.start()
        wait_for(lambda: fresh.lease.holder() == fresh.lease.owner, 10, "the new writer to lead")
        wait_for(lambda: query(s.db, "SELECT COUNT(*) FROM outcomes")[0][0] > 0, 30,
                 "the new writer to be busy with the backlog")
        entries = _unguarded_read(zombie)  # as an earlier release's zombie did on waking
        assert entries, "the zombie pulled entries into its own pending list"
        try:
            zombie.process(zombie.source.admit(entries), threading.Event())
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


def _unguarded_read(writer: Writer) -> list[Entry]:
    return _entries(writer.stream._raw.xreadgroup(
        c.GROUP_WRITERS, writer.stream.consumer, {c.STREAM_INTENTS: ">"}, count=BATCH))


def _pending_under(client: redis.Redis, consumer: str) -> int:
    counts = {row["name"]: row["pending"]
              for row in client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)["consumers"]}
    return counts.get(consumer.encode(), 0)


def _waiting_in_xread(client: redis.Redis) -> bool:
    return any(row.get("cmd") == "xread" and "b" in row.get("flags", "")
               for row in client.client_list())


def test_a_writer_that_lost_the_lead_reads_nothing_even_mid_wait(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring,
        producer: Producer) -> None:
    """The race above, closed: the zombie's wait for new entries began while it led, the
    lead changed during the wait, and entries arrived: none becomes the zombie's."""
    s = load_settings(lease_ms=10_000, batch_wait_ms=3_000)
    zombie, zombie_store = writer_in_process(s, keyring, "zombie")
    got: list[object] = []

    def wait_for_entries() -> None:
        try:
            got.append(zombie.stream.read_new(zombie.lease.owner))
        except Exception as exc:  # shown by the assertion below
            got.append(exc)

    try:
        zombie.stream.ensure_group()
        assert zombie.try_lead()
        waiting = threading.Thread(target=wait_for_entries)
        waiting.start()  # nothing to read yet: it waits up to 3 s for entries
        wait_for(lambda: _waiting_in_xread(redis_client), 5, "the zombie to wait for entries")
        redis_client.set(c.KEY_WRITER_LEASE, "writer-fresh")  # meanwhile another writer leads
        producer.submit_many(new_deposit(u, 1) for u in range(1, 6))
        waiting.join(10)
        assert got == [[]], "the zombie read nothing"
        assert _pending_under(redis_client, zombie.stream.consumer) == 0
        with pytest.raises(LeaseLost):  # and its next read says it no longer leads
            zombie.stream.read_new(zombie.lease.owner)
        assert len(_unguarded_read(zombie)) == 5, "the entries are still there to be read"
    finally:
        zombie_store.close()


def test_a_read_whose_reply_was_lost_is_read_again_before_anything_newer(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring,
        producer: Producer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis ran the read, then the connection dropped before its reply arrived: the
    entries are pending under the writer. It must decide them first, not the ones read
    after them (here a bet that needs the deposit the lost reply held)."""
    s = load_settings(batch_wait_ms=5)
    writer, store = writer_in_process(s, keyring, "writer")
    execute, lost = redis.client.Pipeline.execute, []

    def execute_then_lose_the_first_read(pipe: redis.client.Pipeline, *args, **kwargs):
        reads = any(cmd[0][0] == "XREADGROUP" for cmd in pipe.command_stack)
        result = execute(pipe, *args, **kwargs)
        if reads and result and result[0] and not lost:
            redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            lost.append(result)  # after the kill: the bet is sent on a live connection
            raise redis.ConnectionError("the reply was lost")
        return result

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute_then_lose_the_first_read)
    deposit, bet = new_deposit(9, 500), new_bet(9, 400, "cup", "home", "2.00")
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    try:
        producer.submit(deposit)
        thread.start()
        wait_for(lambda: lost, 10, "the first read to lose its reply")
        producer.submit(bet)
        wait_for(lambda: drained(redis_client), 15, "the writer to commit both")
        rows = dict(query(s.db, "SELECT id, status FROM outcomes"))
        assert rows == {deposit.id: "accepted", bet.id: "accepted"}, rows
        seqs = dict(query(s.db, "SELECT id, seq FROM outcomes"))
        assert seqs[deposit.id] < seqs[bet.id], "decided in stream order"
    finally:
        stop.set()
        thread.join(10)
        store.close()


def test_a_connection_dropped_after_the_read_ran_is_an_error_not_an_empty_read(
        settings: Settings, redis_client: redis.Redis, keyring: Keyring,
        producer: Producer, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py turns a connection lost while a key is WATCHed into a WatchError, the same
    error as a lease change. Taken for one, it read as "nothing", silently, while the read
    had delivered entries; it must reach the writer as the connection error it is."""
    writer, store = writer_in_process(load_settings(), keyring, "writer")
    execute = redis.client.Pipeline._execute_transaction

    def run_then_drop(pipe: redis.client.Pipeline, *args, **kwargs):
        execute(pipe, *args, **kwargs)  # the read runs on the server ...
        pipe.watching = True
        raise redis.ConnectionError("connection lost")  # ... and its reply never arrives

    try:
        writer.stream.ensure_group()
        assert writer.try_lead()
        producer.submit(new_deposit(3, 10))
        monkeypatch.setattr(redis.client.Pipeline, "_execute_transaction", run_then_drop)
        with pytest.raises(redis.ConnectionError):
            writer.stream.read_new_now(writer.lease.owner)
        assert _pending_under(redis_client, writer.stream.consumer) == 1, "it had been read"
    finally:
        store.close()
