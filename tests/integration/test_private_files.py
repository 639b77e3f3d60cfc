"""Private files: what betstream creates is mode 0600 (even under the usual umask 022), and a
keyring or gateway secret that others may write is refused."""

from __future__ import annotations

import io
import json
import stat
import time
from pathlib import Path

import pytest
import redis
from rich.console import Console

from producer.contract import new_deposit
from producer.signing import Keyring
from tests.conftest import KEYRING, Procs, wait_for
from tests.support import drained, query
from workers.adapters.ledger_archive import open_archive
from workers.adapters.ledger_backup import backup
from workers.adapters.ledger_store import Store
from workers.ops.demo_run import DEMO_KEYS, ensure_keyring

PRIVATE = 0o600
BUSY_TIMEOUT_MS = 2000
AGE_MAX_MS = 200  # archive's freshness window: history this old may be archived
ARCHIVE_ENV = {"BETSTREAM_INTENT_AGE_MAX_MS": str(AGE_MAX_MS),
               "BETSTREAM_BREAKER_BACKLOG_AGE_MAX_MS": "100",
               "BETSTREAM_CLOCK_SKEW_MAX_MS": "0"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def ledger_files(db: Path) -> dict[str, int]:
    """The ledger and its -wal and -shm (when there), each with its mode."""
    return {p.name: mode(p) for p in (db, db.with_name(db.name + "-wal"),
                                      db.with_name(db.name + "-shm")) if p.exists()}


def json_events(stderr: str, name: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            out.append(event)
    return out


def test_ledger_wal_shm_backup_and_archive_are_private(
        procs: Procs, producer, redis_client: redis.Redis, env: dict[str, str],
        tmp_path: Path) -> None:
    db = Path(env["BETSTREAM_DB"])
    procs.start("writer")
    producer.submit_many([new_deposit(7, 500), new_deposit(8, 900)])
    wait_for(lambda: drained(redis_client), 30, "the writer to commit the deposits")
    files = ledger_files(db)
    assert {db.name, f"{db.name}-wal", f"{db.name}-shm"} <= set(files), files
    assert files == dict.fromkeys(files, PRIVATE)

    dest = tmp_path / "backups" / "ledger-copy.sqlite3"
    done = procs.run("backup", str(dest))
    assert done.returncode == 0, done.stderr
    assert mode(dest) == PRIVATE

    archive_dir = tmp_path / "archive"
    committed = query(db, "SELECT MAX(committed_at) FROM batches")[0][0]
    wait_for(lambda: time.time() * 1000 > committed + AGE_MAX_MS + 50, 10,
             "the deposits to leave the freshness window")
    done = procs.run("archive", "--before", "2999-01-01", "--json",
                     "--archive-dir", str(archive_dir), **ARCHIVE_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    archives = {p.name: mode(p) for p in archive_dir.iterdir()}
    assert json.loads(done.stdout.splitlines()[-1])["files"], "something was archived"
    assert archives and archives == dict.fromkeys(archives, PRIVATE)


def test_the_library_creates_private_files_without_the_cli(tmp_path: Path) -> None:
    """Under the usual umask 022, used as a library (no `betstream`, no umask of its own)."""
    db = tmp_path / "ledger.sqlite3"
    store = Store(db, BUSY_TIMEOUT_MS, checkpoint_interval_ms=0)
    try:
        files = ledger_files(db)
        assert files == dict.fromkeys(files, PRIVATE) and db.name in files
    finally:
        store.close()
    dest = tmp_path / "copy.sqlite3"
    backup(db, dest, BUSY_TIMEOUT_MS)
    assert mode(dest) == PRIVATE
    archive = tmp_path / "archive" / "2024-01.sqlite3"
    open_archive(archive, BUSY_TIMEOUT_MS).close()
    assert mode(archive) == PRIVATE


def test_a_keyring_others_may_write_is_refused(procs: Procs, env: dict[str, str]) -> None:
    keyring = Path(env["BETSTREAM_KEYRING"])
    keyring.chmod(0o666)
    for command in (("load", "--users", "1", "--bets", "1", "--quiet"), ("writer",)):
        done = procs.run(*command, timeout_s=30)
        assert done.returncode == 2, (command, done.stderr)
        assert str(keyring) in done.stderr and "0666" in done.stderr, done.stderr
        assert "writable" in done.stderr


def test_a_gateway_secret_others_may_write_is_refused(procs: Procs, env: dict[str, str]) -> None:
    secret = Path(env["BETSTREAM_GATEWAY_SECRET_FILE"])
    secret.write_text("s" * 64)
    secret.chmod(0o666)
    done = procs.run("token", "5")
    assert done.returncode == 2, done.stderr
    assert str(secret) in done.stderr and "0666" in done.stderr, done.stderr
    assert done.stdout == "", "no token signed with a secret anyone could have swapped"


def test_world_readable_secrets_are_used_with_a_warning(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str]) -> None:
    keyring = Path(env["BETSTREAM_KEYRING"])
    keyring.chmod(0o644)
    done = procs.run("load", "--users", "1", "--bets", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert redis_client.xlen("betstream:intents") > 0, "the keyring was used"
    [warning] = json_events(done.stderr, "keyring.world_readable")
    assert (warning["level"], warning["path"], warning["mode"]) == (
        "warning", str(keyring), "0644")

    secret = Path(env["BETSTREAM_GATEWAY_SECRET_FILE"])
    secret.write_text("s" * 64)
    secret.chmod(0o644)
    done = procs.run("token", "5")
    assert done.returncode == 0 and done.stdout.startswith("v1.5."), done.stderr
    [warning] = json_events(done.stderr, "gateway_secret.world_readable")
    assert (warning["path"], warning["mode"]) == (str(secret), "0644")
    shown = done.stderr + json.dumps(warning)
    assert "s" * 32 not in shown and not any(e["secret"] in shown for e in KEYRING.values())


def test_backup_refuses_an_existing_file_and_any_symlink(
        procs: Procs, env: dict[str, str], tmp_path: Path) -> None:
    Store(Path(env["BETSTREAM_DB"]), BUSY_TIMEOUT_MS, checkpoint_interval_ms=0).close()
    existing = tmp_path / "existing.sqlite3"
    existing.write_bytes(b"keep me")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    to_victim = tmp_path / "to-victim.sqlite3"
    to_victim.symlink_to(victim)
    planted = tmp_path / "planted"  # where a dangling link would have the copy written
    dangling = tmp_path / "dangling.sqlite3"
    dangling.symlink_to(planted)

    for dest in (existing, to_victim, dangling):
        done = procs.run("backup", str(dest))
        assert done.returncode == 2, (dest, done.stdout, done.stderr)
        assert str(dest) in done.stderr, done.stderr
    assert existing.read_bytes() == b"keep me" and victim.read_bytes() == b"not yours"
    assert not planted.exists() and not planted.is_symlink(), "the link was never followed"
    assert to_victim.is_symlink() and dangling.is_symlink()


def test_the_demo_keyring_is_private_from_its_first_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run`'s keyring is never readable by others, not even between writing its
    secrets and a chmod: every mode it has before a chmod (if any) is already 0600."""
    modes_before_chmod = []
    chmod = Path.chmod

    def watched_chmod(self: Path, *args, **kwargs) -> None:
        modes_before_chmod.append(mode(self))
        chmod(self, *args, **kwargs)

    monkeypatch.setattr(Path, "chmod", watched_chmod)
    path = tmp_path / "var" / "keyring.json"
    ensure_keyring(path, Console(file=io.StringIO()))
    assert mode(path) == PRIVATE
    assert modes_before_chmod in ([], [PRIVATE]), "the secrets sat in a file others could read"
    assert Keyring.load(path).kids() == sorted(DEMO_KEYS)

    content = path.read_bytes()
    ensure_keyring(path, Console(file=io.StringIO()))
    assert path.read_bytes() == content, "an existing keyring is kept"
