"""Archival: history moves to monthly files, the live ledger stays whole on its own, and the
archives plus the live file prove the whole history."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import redis

from producer.client import Producer
from producer.contract import new_bet, new_deposit, new_settle
from tests.conftest import Procs, wait_for
from tests.support import drained, outcome_of, query
from workers.adapters.ledger_archive_audit import audit_with_archives
from workers.adapters.ledger_statement import statement

AGE_MAX_MS = 5000  # a short freshness window, so history is old enough to archive quickly
WRITER_ENV = {"BETSTREAM_INTENT_AGE_MAX_MS": str(AGE_MAX_MS), "BETSTREAM_CLOCK_SKEW_MAX_MS": "0",
              "BETSTREAM_BREAKER_BACKLOG_AGE_MAX_MS": "4000", "BETSTREAM_BATCH_SIZE_MAX": "40"}
USERS = range(1, 21)


def history(producer: Producer, rng: random.Random) -> tuple[list[str], list[str]]:
    """Deposits, bets, settlements (won/lost/void); returns (settled, open) bet ids."""
    producer.submit_many(new_deposit(u, 50_000) for u in USERS)
    bets = [new_bet(rng.choice(USERS), rng.randint(1, 900), f"m{rng.randrange(4)}", "1",
                    rng.choice(["1.50", "2.00", "3.10"])) for _ in range(300)]
    producer.submit_many(bets)
    settled, still_open = bets[:200], bets[200:]
    producer.submit_many(new_settle(b.user_id, b.id, rng.choice(["won", "lost", "void"]))
                         for b in settled)
    # The newest outcomes place open bets: archival must not lose track of their seqs.
    last = [new_bet(rng.choice(USERS), 5, "m0", "1", "2.00") for _ in range(5)]
    producer.submit_many(last)
    return [b.id for b in settled], [b.id for b in still_open + last]


def statements(db: str, archive_dir: Path | None) -> dict[int, tuple]:
    out = {}
    for u in USERS:
        st = statement(Path(db), u, archive_dir=archive_dir)
        out[u] = ([(ln.entry_id, ln.amount, ln.balance, ln.ref_id) for ln in st.lines], st.closing,
                  st.consistent)
    return out


def old_enough(db: str) -> bool:
    newest = query(db, "SELECT MAX(committed_at) FROM batches")[0][0]
    return time.time() * 1000 > newest + AGE_MAX_MS + 50


# The writer's lister either lists every row within ~50 ms (archival must then take the
# listed rows out too: the audit's "user_entries list the ledger" fails on any it leaves
# behind), or, at its default threshold, nothing here (statements read the ledger's tail).
LISTING = {"listed": {"BETSTREAM_LISTING_LAG_ROWS_MIN": "1",
                      "BETSTREAM_LISTING_INTERVAL_MS": "50"},
           "unlisted": {}}


@pytest.fixture(params=sorted(LISTING))
def archived_env(env: dict[str, str], tmp_path: Path, request) -> dict[str, str]:
    return {**env, **WRITER_ENV, "BETSTREAM_ARCHIVE_DIR": str(tmp_path / "archive"),
            **LISTING[request.param]}


def listed_through(db: str) -> int:
    return query(db, "SELECT value FROM meta WHERE key = 'user_entries_through'")[0][0]


def test_archive_moves_settled_history_and_every_proof_still_holds(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        archived_env: dict[str, str], tmp_path: Path) -> None:
    procs.env = archived_env
    procs.start("writer")
    settled, still_open = history(producer, random.Random(7))
    wait_for(lambda: drained(redis_client), 60, "the writer to commit the history")
    db, adir = archived_env["BETSTREAM_DB"], tmp_path / "archive"
    if "BETSTREAM_LISTING_LAG_ROWS_MIN" in archived_env:
        top = query(db, "SELECT MAX(entry_id) FROM transaction_ledger")[0][0]
        wait_for(lambda: listed_through(db) >= top, 20, "the writer's lister to list it all")
    before = statements(db, None)
    fields_of_first = redis_client.xrange("betstream:intents", count=1)[0][1]
    wait_for(lambda: old_enough(db), 20, "the history to leave the freshness window")

    run = procs.run("archive", "--before", "2999-01-01", "--json",
                    BETSTREAM_ARCHIVE_CHUNK_ROWS_MAX="50")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["cutoff_by"] == "freshness" and summary["chunks"] > 5
    assert [p.name for p in adir.iterdir() if p.suffix == ".sqlite3"] == summary["files"]

    assert procs.run("audit").returncode == 0, "the live file alone still proves its invariants"
    failed = [c for c in audit_with_archives(Path(db), adir, 2000) if not c.ok]
    assert not failed, "the archives and the live file prove the whole history"
    assert statements(db, adir) == before, "statements read through the archives are unchanged"
    live_only = statements(db, None)
    for u in USERS:
        lines, closing, consistent = live_only[u]
        assert consistent and closing == before[u][1]
        assert lines[0][0] < 0, "archived entries show as one carried-forward line"
    assert query(db, "SELECT COUNT(*) FROM bets WHERE status != 'open'") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM bets")[0][0] == len(still_open), "open bets stay"

    # Life goes on: an open bet placed before the cutoff settles normally; an archived intent
    # re-sent unchanged is refused as stale (its outcome left with the archive).
    bet = query(db, "SELECT id, user_id, stake, odds FROM bets LIMIT 1")[0]
    settle = new_settle(bet[1], bet[0], "won")
    producer.submit(settle)
    redis_client.xadd("betstream:intents", fields_of_first)
    wait_for(lambda: drained(redis_client), 30, "the writer to take the new intents")
    assert outcome_of(db, settle.id)["status"] == "accepted"
    first_id = json.loads(fields_of_first[b"body"])["id"]
    assert outcome_of(db, first_id)["reason"] == "stale"
    assert procs.run("audit").returncode == 0
    run = procs.run("audit", "--with-archives")
    assert run.returncode == 0, run.stdout


def test_a_resent_copy_waiting_in_the_stream_keeps_its_original_live(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        archived_env: dict[str, str]) -> None:
    """A copy of an intent re-sent just inside its freshness window and not yet read must
    find its original outcome live when the writer gets to it: archival holds back."""
    procs.env = archived_env
    writer = procs.start("writer")
    history(producer, random.Random(3))
    wait_for(lambda: drained(redis_client), 60, "the writer to commit the history")
    writer.kill()
    writer.wait(10)
    db = archived_env["BETSTREAM_DB"]
    entry_id, fields = redis_client.xrevrange("betstream:intents", count=1)[0]
    committed = query(db, "SELECT MAX(committed_at) FROM batches")[0][0]
    wait_for(lambda: time.time() * 1000 > committed + AGE_MAX_MS - 1500, 20,
             "the last intent to near the end of its freshness window")
    redis_client.xadd("betstream:intents", fields)  # a re-send: fresh, waiting unread
    before = query(db, "SELECT id, balance FROM users ORDER BY id")
    wait_for(lambda: old_enough(db), 20, "the history to leave the freshness window")

    run = procs.run("archive", "--before", "2999-01-01", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["cutoff_by"] == "backlog"
    procs.start("writer")
    wait_for(lambda: drained(redis_client), 30, "the writer to read the re-sent copy")
    intent_id = json.loads(fields[b"body"])["id"]
    assert query(db, "SELECT COUNT(*) FROM outcomes WHERE id = ?", (intent_id,)) == [(1,)]
    assert query(db, "SELECT id, balance FROM users ORDER BY id") == before, "no second effect"
    assert procs.run("audit").returncode == 0
