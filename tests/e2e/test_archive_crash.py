"""Archive while a load runs, SIGKILL the archiver mid-way and run it again: every entry
is held exactly once (live or archived), statements are unchanged, the proofs hold."""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path

import redis

from producer.client import Producer
from tests.conftest import Procs, wait_for
from tests.e2e.test_archive import WRITER_ENV, history, old_enough, statements
from tests.support import drained, query


def held(db: str, adir: Path, table: str, key: str) -> Counter:
    """How many times each key is held across the live file and the archives (archived
    rows count up to the live anchor: a killed run may have copied rows still live)."""
    through = query(db, "SELECT COALESCE(MAX(through_batch), 0) FROM archive_anchor")[0][0]
    live_where = " WHERE entry_id > 0" if table == "transaction_ledger" else ""
    keys = Counter(r[0] for r in query(db, f"SELECT {key} FROM {table}{live_where}"))
    for file in sorted(adir.glob("*.sqlite3")):
        keys.update(r[0] for r in query(file, f"SELECT {key} FROM {table} WHERE batch_no <= ?",
                                        (through,)))
    return keys


def anchor(db: str) -> int:
    return query(db, "SELECT COALESCE(MAX(through_batch), 0) FROM archive_anchor")[0][0]


def test_archive_killed_mid_way_resumes_without_losing_or_doubling(
        procs: Procs, redis_client: redis.Redis, producer: Producer, env: dict[str, str],
        tmp_path: Path) -> None:
    adir = tmp_path / "archive"
    procs.env = {**env, **WRITER_ENV, "BETSTREAM_ARCHIVE_DIR": str(adir),
                 "BETSTREAM_ARCHIVE_CHUNK_ROWS_MAX": "60", "BETSTREAM_ARCHIVE_PAUSE_MS": "30"}
    procs.start("writer")
    for _ in range(3):
        history(producer, random.Random())
    wait_for(lambda: drained(redis_client), 90, "the writer to commit the history")
    db = procs.env["BETSTREAM_DB"]
    before = statements(db, None)
    entries_before = held(db, adir, "transaction_ledger", "entry_id")
    wait_for(lambda: old_enough(db), 20, "the history to leave the freshness window")

    journal = tmp_path / "load.journal"
    load = procs.start("load", "--users", "20", "--user-first", "1000", "--bets", "15000",
                       "--rate", "1500", "--quiet", "--journal", str(journal), name="load")
    first = procs.start("archive", "--before", "2999-01-01", "--quiet", name="archive")
    wait_for(lambda: anchor(db) > 0, 30, "the archiver to move its first chunks")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    partial = anchor(db)
    run = procs.run("archive", "--before", "2999-01-01")
    assert run.returncode == 0, run.stdout + run.stderr
    assert anchor(db) > partial, "the second run resumed where the first was killed"
    assert load.wait(120) == 0
    wait_for(lambda: drained(redis_client), 90, "the writer to commit the load")

    entries = held(db, adir, "transaction_ledger", "entry_id")
    assert max(entries.values()) == 1, "no ledger entry is held twice"
    assert set(entries_before) <= set(entries), "no ledger entry was lost"
    seqs = held(db, adir, "outcomes", "seq")
    assert max(seqs.values()) == 1 and len(seqs) == max(seqs), "every outcome once, none lost"
    assert statements(db, adir) == before, "statements read through the archives are unchanged"
    assert procs.run("audit").returncode == 0
    audit = procs.run("audit", "--with-archives")
    assert audit.returncode == 0, audit.stdout
    run = procs.run("archive", "--before", "2999-01-01")  # now the load's batches too
    assert run.returncode == 0, run.stdout + run.stderr
    reconciled = procs.run("reconcile", "--journal", str(journal))
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
