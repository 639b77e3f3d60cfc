"""Online backup during load passes audit; statements explain every balance."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from producer.contract import new_bet, new_deposit, new_withdrawal
from tests.conftest import Procs, wait_for
from tests.support import drained


def test_backup_while_the_writer_runs_is_consistent(
        procs: Procs, redis_client: redis.Redis, tmp_path: Path) -> None:
    procs.start("writer")
    load = procs.start("load", "--users", "50", "--bets", "20000", "--rate", "5000", "--quiet")
    wait_for(lambda: redis_client.xlen("betstream:intents") > 2000, 30, "the load to flow")
    copies = []
    for n in range(3):  # several copies while commits keep landing
        dest = tmp_path / f"backup-{n}.sqlite3"
        done = procs.run("backup", str(dest))
        assert done.returncode == 0, done.stderr
        copies.append(dest)
    assert load.wait(60) == 0
    for dest in copies:
        audit = procs.run("audit", "--db", str(dest))
        assert audit.returncode == 0, audit.stdout
    again = procs.run("backup", str(copies[0]))
    assert again.returncode == 2 and "never overwrites" in again.stderr


def test_statement_explains_the_balance(procs: Procs, producer, redis_client: redis.Redis) -> None:
    bet = new_bet(8, 300, "final", "home", "2.00")
    producer.submit_many([new_deposit(8, 1_000), bet, new_withdrawal(8, 200)])
    procs.start("writer")
    wait_for(lambda: drained(redis_client), 30, "the intents to be committed")
    done = procs.run("statement", "8", "--json")
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert [(ln["ref_type"], ln["amount"], ln["balance"]) for ln in st["lines"]] == [
        ("deposit", 1000, 1000), ("bet", -300, 700), ("withdrawal", -200, 500)]
    assert st["lines"][1]["ref_id"] == bet.id
    assert st["closing"] == st["snapshot"] == 500 and st["consistent"]
    text = procs.run("statement", "8").stdout
    assert "account snapshot 500: matches" in text
    missing = procs.run("statement", "999")
    assert missing.returncode == 2 and "no account 999" in missing.stderr
