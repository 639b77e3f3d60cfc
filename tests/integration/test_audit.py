"""``betstream audit`` on a ledger built by a real writer under load: it passes on the real
thing, and it names the broken invariant when someone edits the file with the sqlite3 CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.client import entry_fields
from producer.contract import encode_body, new_nonce, now_ms
from producer.signing import Keyring
from tests.conftest import BETSTREAM, KEYRING, ROOT, Procs, RedisServer, wait_for
from tests.support import drained, query

SQLITE3 = "/usr/bin/sqlite3"
AUDIT_LIVE_BATCH_SIZE_MAX = 50  # intents: 3,030 of them make ~60 batches to audit between

CHECK_NAMES = (
    "ledger sums to zero", "every transaction sums to zero", "balances equal ledger sums",
    "no player below zero", "hash chain intact", "one stake entry per accepted bet",
    "at most one settlement per bet", "every accepted outcome is in the ledger",
    "ledger is append-only",
)
RECREATE_UPDATE_TRIGGER = (
    "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON transaction_ledger "
    "BEGIN SELECT RAISE(ABORT, 'transaction_ledger is append-only'); END;")


def sqlite(db: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([SQLITE3, str(db), sql], capture_output=True, text=True, timeout=30)


def scalar(db: Path, sql: str) -> object:
    return query(db, sql)[0][0]


def report(result: subprocess.CompletedProcess) -> dict[str, str]:
    """check name -> 'ok' | 'FAIL' from the human-readable audit output."""
    out = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.strip().partition(" ")
        if status in ("ok", "FAIL"):
            out[rest.strip().split(":", 1)[0]] = status
    return out


def failed(result: subprocess.CompletedProcess) -> set[str]:
    return {name for name, status in report(result).items() if status == "FAIL"}


def _settle_some(client: redis.Redis, keyring: Keyring, db: Path) -> int:
    """Settle a third of the open bets (won, lost and void in turn), signed by the
    settlement key; returns how many settle intents were sent."""
    key = keyring.get("settlement")
    open_bets = query(db, "SELECT id, user_id FROM bets WHERE status = 'open' ORDER BY id")
    sent = 0
    pipe = client.pipeline(transaction=False)
    for n, (bet_id, user_id) in enumerate(open_bets[::3]):
        body = {"id": str(uuid.uuid4()), "kind": "settle", "user_id": user_id,
                "bet_id": bet_id, "outcome": ("won", "lost", "void")[n % 3],
                "nonce": new_nonce(), "issued_at": now_ms()}
        pipe.xadd("betstream:intents", entry_fields(key, encode_body(body)))
        sent += 1
    pipe.execute()
    return sent


@pytest.fixture(scope="module")
def loaded_ledger(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger written by a real `betstream writer` process from a real `betstream load`
    (deposits, bets, withdrawals, re-sends), plus won/lost/void settlements; built once
    and copied by each test."""
    home = tmp_path_factory.mktemp("audit-ledger")
    keyring_path = home / "keyring.json"
    keyring_path.write_text(json.dumps(KEYRING))
    db = home / "ledger.sqlite3"
    env = {**os.environ, "BETSTREAM_REDIS_URL": redis_server.url, "BETSTREAM_DB": str(db),
           "BETSTREAM_KEYRING": str(keyring_path), "BETSTREAM_LOG_FORMAT": "json",
           "PYTHONPATH": str(ROOT)}
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    with open(home / "writer.log", "wb") as log:
        writer = subprocess.Popen([*BETSTREAM, "writer"], env=env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        load = subprocess.run(
            [*BETSTREAM, "load", "--users", "40", "--bets", "1500", "--withdrawals", "0.1",
             "--duplicates", "0.05", "--seed", "11", "--quiet", "--json"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert load.returncode == 0, load.stderr
        wait_for(lambda: drained(client), 30, "the writer to drain the load")
        settles = _settle_some(client, Keyring.load(keyring_path), db)
        assert settles > 0
        wait_for(lambda: drained(client), 30, "the writer to drain the settlements")
    finally:
        writer.send_signal(signal.SIGTERM)  # clean stop: WAL checkpointed on close
        rc = writer.wait(15)
        client.close()
    assert rc == 0, (home / "writer.log").read_text()[-2000:]
    return db


@pytest.fixture
def ledger(loaded_ledger: Path, tmp_path: Path) -> Iterator[Path]:
    """This test's private copy of the loaded ledger (safe to tamper with)."""
    target = tmp_path / "copy.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{loaded_ledger}{suffix}")
        if src.exists():
            shutil.copy(src, f"{target}{suffix}")
    yield target


def test_audit_of_a_real_load_passes(procs: Procs, ledger: Path) -> None:
    """After a real load (bets, withdrawals, re-sends, settlements) every invariant holds."""
    # The load really exercised every kind of ledger movement the audit reasons about.
    kinds = {r[0] for r in query(ledger, "SELECT DISTINCT ref_type FROM transaction_ledger")}
    assert kinds == {"deposit", "withdrawal", "bet", "settle"}
    statuses = {r[0] for r in query(ledger, "SELECT DISTINCT status FROM bets")}
    assert statuses == {"open", "won", "lost", "void"}
    assert scalar(ledger, "SELECT COUNT(*) FROM batches") > 1

    result = procs.run("audit", "--db", str(ledger))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("all invariants hold")
    checks = report(result)
    assert set(CHECK_NAMES) <= set(checks), "the invariants of docs/ledger.md are all checked"
    assert set(checks.values()) == {"ok"}


def test_audit_during_live_writes_passes(procs: Procs, redis_client: redis.Redis,
                                         env: dict[str, str]) -> None:
    """An operator may audit while the writer commits: a consistent snapshot passes."""
    # Small batches: a busy machine makes a writer's batches larger, and three of them
    # could hold the whole load before a first audit runs.
    procs.start("writer", BETSTREAM_BATCH_SIZE_MAX=str(AUDIT_LIVE_BATCH_SIZE_MAX))
    load = procs.start("load", "--users", "30", "--bets", "3000", "--rate", "3000", "--quiet",
                       "--seed", "3")
    db = Path(env["BETSTREAM_DB"])

    def batches() -> int:
        try:
            return int(scalar(db, "SELECT COUNT(*) FROM batches")) if db.exists() else 0
        except sqlite3.OperationalError:
            return 0  # the writer is still creating the schema

    wait_for(lambda: batches() > 3, 20, "the writer to commit some batches")
    audits_during_load = 0
    while load.poll() is None or not drained(redis_client):
        result = procs.run("audit")
        assert result.returncode == 0, result.stdout + result.stderr
        audits_during_load += 1
        assert audits_during_load < 100, "the load never drained"
    assert load.returncode == 0
    assert audits_during_load >= 1
    assert scalar(db, "SELECT COUNT(*) FROM outcomes") == 3030
    assert procs.run("audit").returncode == 0


def test_balance_edited_with_sqlite3_is_caught(procs: Procs, ledger: Path) -> None:
    """Someone adds one cent to user 1 by hand: audit exits 1 naming the balance check."""
    edit = sqlite(ledger, "UPDATE users SET balance = balance + 1 WHERE id = 1")
    assert edit.returncode == 0, edit.stderr

    result = procs.run("audit", "--db", str(ledger))
    assert result.returncode == 1, result.stdout + result.stderr
    assert failed(result) == {"balances equal ledger sums"}
    assert "FAIL  balances equal ledger sums: 1 accounts differ, e.g. 1" in result.stdout
    assert "INVARIANTS VIOLATED" in result.stdout


def _two_player_rows(ledger: Path) -> tuple[int, int]:
    rows = query(ledger, "SELECT entry_id FROM transaction_ledger WHERE user_id > 0 "
                         "AND amount > 1 ORDER BY entry_id LIMIT 2")
    return rows[0][0], rows[1][0]


def test_amount_moved_between_ledger_rows_breaks_the_hash_chain(
        procs: Procs, ledger: Path) -> None:
    """With the trigger dropped, 1 unit moved from one ledger row to another keeps the
    global sum at zero, but the hash chain (and the missing trigger) give it away."""
    src, dst = _two_player_rows(ledger)
    move = "UPDATE transaction_ledger SET amount = amount {} 1 WHERE entry_id = {};"
    edit = sqlite(ledger, "DROP TRIGGER ledger_no_update; "
                          + move.format("-", src) + move.format("+", dst))
    assert edit.returncode == 0, edit.stderr
    assert scalar(ledger, "SELECT SUM(amount) FROM transaction_ledger") == 0

    result = procs.run("audit", "--db", str(ledger))
    assert result.returncode == 1, result.stdout + result.stderr
    assert report(result)["ledger sums to zero"] == "ok"
    assert {"hash chain intact", "ledger is append-only"} <= failed(result)
    assert "FAIL  hash chain intact: broken at batch" in result.stdout
    assert "missing triggers ['ledger_no_update']" in result.stdout


def test_careful_forgery_is_caught_by_the_hash_chain_alone(procs: Procs, ledger: Path) -> None:
    """A forger who keeps every sum and balance consistent and restores the trigger is still
    caught: only the hash chain check fails, at the batch that was edited."""
    txn, cash_row, player_row, player, batch_no = query(ledger, """
        SELECT c.txn_id, c.entry_id, p.entry_id, p.user_id, p.batch_no
        FROM transaction_ledger c JOIN transaction_ledger p ON p.txn_id = c.txn_id
        JOIN users u ON u.id = p.user_id
        WHERE c.ref_type = 'deposit' AND c.user_id = 0 AND p.user_id > 0 AND u.balance > 0
        ORDER BY c.entry_id LIMIT 1""")[0]
    edit = sqlite(ledger, f"""
        DROP TRIGGER ledger_no_update;
        BEGIN;
        UPDATE transaction_ledger SET amount = amount + 1 WHERE entry_id = {cash_row};
        UPDATE transaction_ledger SET amount = amount - 1 WHERE entry_id = {player_row};
        UPDATE users SET balance = balance + 1 WHERE id = 0;
        UPDATE users SET balance = balance - 1 WHERE id = {player};
        COMMIT;
        {RECREATE_UPDATE_TRIGGER}""")
    assert edit.returncode == 0, edit.stderr
    assert scalar(ledger, f"SELECT SUM(amount) FROM transaction_ledger WHERE txn_id = '{txn}'") == 0

    result = procs.run("audit", "--db", str(ledger))
    assert result.returncode == 1, result.stdout + result.stderr
    assert failed(result) == {"hash chain intact"}
    assert f"FAIL  hash chain intact: broken at batch {batch_no}" in result.stdout


def test_deleting_or_editing_a_ledger_row_is_refused(procs: Procs, ledger: Path) -> None:
    """The ledger is append-only even for someone holding the sqlite3 CLI and the file."""
    rows = scalar(ledger, "SELECT COUNT(*) FROM transaction_ledger")
    first = scalar(ledger, "SELECT amount FROM transaction_ledger WHERE entry_id = 1")

    delete = sqlite(ledger, "DELETE FROM transaction_ledger WHERE entry_id = 1")
    assert delete.returncode != 0
    assert "append-only" in delete.stderr
    update = sqlite(ledger, "UPDATE transaction_ledger SET amount = amount + 1 WHERE entry_id = 1")
    assert update.returncode != 0
    assert "append-only" in update.stderr

    assert scalar(ledger, "SELECT COUNT(*) FROM transaction_ledger") == rows
    assert scalar(ledger, "SELECT amount FROM transaction_ledger WHERE entry_id = 1") == first
    result = procs.run("audit", "--db", str(ledger))
    assert result.returncode == 0, result.stdout + result.stderr


def test_audit_json_report_for_monitoring(procs: Procs, ledger: Path) -> None:
    """Monitoring scrapes `audit --json`: ok=true on a clean ledger, and after a hand edit
    ok=false with exactly the broken check named, exit codes 0 and 1 as for text output."""
    clean = procs.run("audit", "--db", str(ledger), "--json")
    assert "Traceback" not in clean.stderr, clean.stderr[-300:]
    assert clean.returncode == 0
    doc = json.loads(clean.stdout)
    assert doc["ok"] is True and doc["db"] == str(ledger)
    assert set(CHECK_NAMES) <= {c["name"] for c in doc["checks"]}
    assert all(c["ok"] for c in doc["checks"])

    assert sqlite(ledger, "UPDATE users SET balance = balance + 1 WHERE id = 1").returncode == 0
    tampered = procs.run("audit", "--db", str(ledger), "--json")
    assert tampered.returncode == 1
    doc = json.loads(tampered.stdout)
    assert doc["ok"] is False
    assert [c["name"] for c in doc["checks"] if not c["ok"]] == ["balances equal ledger sums"]


def test_audit_of_a_missing_file_says_so_and_exits_2(procs: Procs, tmp_path: Path) -> None:
    """A typo in the path gives a one-line message and exit code 2, not a traceback, and
    does not create an empty database."""
    missing = tmp_path / "missing.sqlite3"
    for args, extra_env in ((("audit", "--db", str(missing)), {}),
                            (("audit",), {"BETSTREAM_DB": str(missing)})):
        result = procs.run(*args, **extra_env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert "database not found" in result.stderr and str(missing) in result.stderr
        assert "all invariants hold" not in result.stdout
        assert not missing.exists()


@pytest.mark.parametrize("content", [b"", b"this is not a database\n" * 10],
                         ids=["empty-file", "not-sqlite"])
def test_audit_of_a_file_that_is_not_a_ledger_exits_2_without_traceback(
        procs: Procs, tmp_path: Path, content: bytes) -> None:
    """Pointing audit at the wrong file gives a clear message and exit 2, like a missing one."""
    wrong = tmp_path / "wrong.sqlite3"
    wrong.write_bytes(content)
    result = procs.run("audit", "--db", str(wrong))
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert result.returncode == 2
    assert str(wrong) in result.stderr


def test_paths_with_a_hash_are_the_files_named(procs: Procs, ledger: Path,
                                               tmp_path: Path) -> None:
    """A '#' (or '?') is part of the file name: --db audits that file, and backup copies
    it there (a file: URI built by hand had cut the path at '#', opening an empty file)."""
    odd = tmp_path / "odd #1 ?x"
    odd.mkdir()
    copy = odd / "copy#1.sqlite3"
    backup = procs.run("backup", str(copy), BETSTREAM_DB=str(ledger))
    assert backup.returncode == 0, backup.stdout + backup.stderr
    result = procs.run("audit", "--db", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert report(result)["ledger sums to zero"] == "ok"
    assert sorted(p.name for p in odd.iterdir() if not p.name.endswith(("-wal", "-shm"))) \
        == ["copy#1.sqlite3"], "no file named by a cut path was created"
    assert not (tmp_path / "odd ").exists()
