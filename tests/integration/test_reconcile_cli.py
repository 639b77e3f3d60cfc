"""``betstream reconcile`` as an operator meets it: exit codes and what it says."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import redis

from producer.client import Producer
from producer.contract import new_bet, new_deposit
from producer.journal import Journal, JournaledProducer
from tests.conftest import Procs, wait_for
from tests.support import drained


def test_reconcile_waits_for_the_drain_then_finds_nothing_missing_or_the_lost_one(
        procs: Procs, producer: Producer, redis_client: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "p.journal"
    with Journal(path) as journal:
        JournaledProducer(producer, journal).submit_many(
            [new_deposit(4, 1_000), *(new_bet(4, 10, "m", "1", "2.00") for _ in range(20))])
    redis_client.xgroup_create("betstream:intents", "betstream:writers", id="0")
    pending = procs.run("reconcile", "--journal", str(path))
    assert pending.returncode == 1 and "not drained yet" in pending.stdout
    assert "21 unread" in pending.stdout

    procs.start("writer")
    wait_for(lambda: drained(redis_client), 30, "the writer to drain")
    ok = procs.run("reconcile", "--journal", str(path), "--wait", "10")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "reconciled 21 acknowledged intents" in ok.stdout
    assert "nothing acknowledged is missing" in ok.stdout

    ghost = str(uuid.uuid4())  # acknowledged by Redis, never decided: what a crash loses
    with open(path, "a") as f:
        f.write(json.dumps({"id": ghost, "entry": "1795622809447-3", "kind": "bet",
                            "user": 4}) + "\n")
    lost = procs.run("reconcile", "--journal", str(path))
    assert lost.returncode == 1
    assert "LOST (acknowledged by Redis, no outcome): 1" in lost.stdout and ghost in lost.stdout
    assert "2026-11-" in lost.stdout, "the ingress time of the lost ones, readable"
    report = json.loads(procs.run("reconcile", "--journal", str(path), "--json").stdout)
    assert report["lost_ids"] == [ghost] and report["lost_entry_ms"] == [1795622809447] * 2
    assert report["doubled"] == 0 and report["with_outcome"] == 21


def test_unreadable_input_exits_2(procs: Procs, tmp_path: Path) -> None:
    bad = tmp_path / "bad.journal"
    bad.write_text("garbage\n{}\n")
    run = procs.run("reconcile", "--journal", str(bad), "--offline")
    assert run.returncode == 2 and "bad.journal:1" in run.stderr
    missing = procs.run("reconcile", "--journal", str(tmp_path / "nope"), "--offline")
    assert missing.returncode == 2 and "cannot read journal" in missing.stderr
    no_ledger = tmp_path / "empty.journal"
    no_ledger.write_text("")
    run = procs.run("reconcile", "--journal", str(no_ledger), "--offline",
                    "--db", str(tmp_path / "absent.sqlite3"))
    assert run.returncode == 2 and "database not found" in run.stderr
