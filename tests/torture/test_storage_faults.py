"""Storage faults under a real writer process and real load.

Each fault is real, not a mock: a tmpfs that runs out of space (SQLITE_FULL), immutable
files under a live writer, another process holding SQLite's write lock, a loop device
whose writes the kernel throttles (slow fsync), and fsync reporting EIO. For each the
writer must keep running, ack nothing that is not durable, shed producers through the
breaker where the fault lasts, recover by itself, and end with every intent id having
exactly one outcome, balances equal to an independent model, and a passing audit.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import redis

from producer.breaker_state import BreakerLimits
from tests.conftest import Procs, wait_for
from tests.integration.test_breaker_faults import BREAKER_ENV, STABILITY_S, state, write_lock
from tests.support import query
from tests.torture.report import Row, scaled
from tests.torture.storage_support import (
    Accounting,
    SyncFaults,
    account,
    acked_without_outcome,
    build_shim,
    pending_count,
    slow_sync,
    tmpfs,
)
from workers.adapters.breaker_store import BreakerStore

USERS = 30
ROOMY_MB = 512  # tmpfs size once space is "freed": room for the WAL's high-water mark
LOAD_WAIT_S = 300  # the load is shed for as long as a fault lasts, then catches up
DEPOSIT = 2_000_000  # enough for most bets to be accepted, hot users still run dry
WRITER_ENV = {**BREAKER_ENV, "BETSTREAM_BATCH_SIZE_MAX": "200", "BETSTREAM_LEASE_MS": "5000"}
RESTARTED_ENV = {**WRITER_ENV, "BETSTREAM_LEASE_MS": "1000"}  # a killed writer's lease lapses fast


def start_load(procs: Procs, bets: int, rate: int, seed: int = 1) -> subprocess.Popen:
    return procs.start("load", "--users", str(USERS), "--bets", str(bets), "--rate", str(rate),
                       "--withdrawals", "0.05", "--duplicates", "0.02", "--deposit", str(DEPOSIT),
                       "--seed", str(seed), "--quiet", "--json", name=f"load{seed}")


def load_summary(proc: subprocess.Popen) -> dict:
    assert proc.wait(LOAD_WAIT_S) == 0, Path(proc.log_path).read_text()[-2000:]
    return json.loads(Path(proc.log_path).read_text().strip().splitlines()[-1])


def retries(proc: subprocess.Popen, needle: str) -> int:
    """Failed steps the writer logged whose error mentions ``needle``."""
    lines = Path(proc.log_path).read_text(errors="replace").splitlines()
    return sum(1 for line in lines if '"writer.retry"' in line and needle in line)


def transitions(client: redis.Redis) -> list[dict[str, str]]:
    return BreakerStore(client, BreakerLimits()).transitions(1000)[::-1]


def check_during_fault(writer: subprocess.Popen, client: redis.Redis, db: str,
                       seconds: float) -> int:
    """While the fault lasts: the writer stays up, entries of failed batches stay pending,
    and nothing acknowledged lacks a durable outcome. Returns the checks made."""
    checks, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        assert writer.poll() is None, "the writer keeps running through the fault"
        assert acked_without_outcome(client, db) == [], "acked only after a durable commit"
        checks += 1
        time.sleep(0.2)
    return checks


def record(row: Row, acc: Accounting) -> None:
    row.intents, row.lost, row.doubled, row.audit = acc.intents, acc.lost, acc.doubled, acc.audit


def assert_exact(acc: Accounting) -> None:
    assert acc.lost == 0, f"{acc.lost} intents have no outcome"
    assert acc.doubled == 0, f"{acc.doubled} extra outcomes"
    assert acc.outcomes_match, "each outcome is what the stream order implies"
    assert acc.balances_match, "balances equal the independent model"
    assert acc.audit == "pass", acc.audit_output


def wait_closed(client: redis.Redis) -> None:
    wait_for(lambda: state(client) == "closed", 60, "the breaker to close again")


def assert_closed_after_window(client: redis.Redis) -> None:
    """The last HALF_OPEN -> CLOSED took at least the stability window."""
    wait_closed(client)
    log = transitions(client)
    assert [t["state"] for t in log[-2:]] == ["half_open", "closed"]
    assert int(log[-1]["since_ms"]) - int(log[-2]["since_ms"]) >= STABILITY_S * 1000


def committed(db: str) -> int:
    """Outcomes in the ledger (0 while the writer is still creating it)."""
    try:
        return query(db, "SELECT COUNT(*) FROM outcomes")[0][0]
    except sqlite3.OperationalError:
        return 0


def wait_committing(db: str, what: str, timeout_s: float = 30) -> None:
    """Wait until a batch commits after now (the ledger exists from the first one)."""
    before = committed(db)
    wait_for(lambda: committed(db) > before, timeout_s, what)


def finish(procs: Procs, client: redis.Redis, db: str, row: Row, load: subprocess.Popen,
           faults: str, restarts: bool = False) -> Accounting:
    """Common ending: the load completes, everything drains, the counts go in the report."""
    summary = load_summary(load)
    acc = account(procs, client, db)
    record(row, acc)
    row.faults = faults
    row.extra["shed"] = summary["shed"]
    if not restarts:
        assert procs.started[0].poll() is None, "the same writer process did all of it"
    return acc


# --- disk full ---------------------------------------------------------------------------

def test_disk_full_keeps_everything_and_recovers_by_itself(
        procs: Procs, redis_client: redis.Redis, tmp_path: Path, torture_report) -> None:
    """The ledger on a 2 MiB tmpfs fills up under load (SQLITE_FULL); then the tmpfs is
    grown in place (remount), as an operator freeing space would, possibly several times."""
    row = torture_report("disk full (tmpfs, SQLITE_FULL)")
    cycles = scaled(1, 3)
    with tmpfs(tmp_path / "small", "2m") as fs:
        db = procs.env["BETSTREAM_DB"] = str(fs.path / "ledger.sqlite3")
        writer = procs.start("writer", **WRITER_ENV)
        load = start_load(procs, bets=scaled(20_000, 60_000), rate=scaled(1500, 2000))
        size_mb, checks, failures_seen = 2, 0, 0
        for cycle in range(1, cycles + 1):
            wait_for(lambda seen=failures_seen: retries(writer, "disk is full") > seen, 90,
                     f"the ledger's disk to fill (cycle {cycle})")
            wait_for(lambda: state(redis_client) == "open", 30, "the breaker to open")
            assert pending_count(redis_client) > 0, "the failed batch stays pending, not acked"
            checks += check_during_fault(writer, redis_client, db, 2)
            audit = procs.run("audit")
            assert audit.returncode == 0, "no partial batch in the full file: " + audit.stdout
            size_mb += 1 if cycle < cycles else ROOMY_MB  # a little room, or plenty at the end
            done = committed(db)
            fs.resize(f"{size_mb}m")
            wait_for(lambda done=done: committed(db) > done, 30,
                     "commits to resume by themselves once space is free")
            failures_seen = retries(writer, "disk is full")
        summary = load_summary(load)
        acc = account(procs, redis_client, db)
        failed = retries(writer, "disk is full")
        record(row, acc)
        row.faults = f"{cycles} disk-full spells, {failed} failed commits/opens"
        row.extra.update(shed=summary["shed"], checks_during_fault=checks)
        assert writer.poll() is None, "the same writer process did all of it (no restarts)"
        assert summary["shed"] > 0, "producers were shed while the disk was full"
        assert_exact(acc)
        assert_closed_after_window(redis_client)


def test_writer_restarted_onto_a_full_disk_waits_and_recovers(
        procs: Procs, redis_client: redis.Redis, tmp_path: Path, torture_report) -> None:
    """An operator (or a supervisor) restarts the writer while the disk is still full: the
    new process cannot write its ledger and must wait for space, not crash-loop."""
    row = torture_report("disk full, writer restarted while full")
    with tmpfs(tmp_path / "small", "2m") as fs:
        db = procs.env["BETSTREAM_DB"] = str(fs.path / "ledger.sqlite3")
        writer = procs.start("writer", **RESTARTED_ENV)
        load = start_load(procs, bets=scaled(10_000, 40_000), rate=1500)
        wait_for(lambda: retries(writer, "disk is full") > 0, 90, "the ledger's disk to fill")
        writer.kill()
        writer.wait(10)
        closed = procs.run("breaker", "close", "--reason", "writer restarted")
        assert closed.returncode == 0, closed.stderr
        writer = procs.start("writer", **RESTARTED_ENV)
        wait_for(lambda: retries(writer, "disk is full") > 2, 30,
                 "the restart to meet the full disk")
        wait_for(lambda: state(redis_client) == "open", 20, "the new writer to open the breaker")
        assert "disk is full" in transitions(redis_client)[-1]["reason"]
        check_during_fault(writer, redis_client, db, 2)
        assert writer.poll() is None, "the restarted writer waits for space"
        fs.resize(f"{ROOMY_MB}m")
        acc = finish(procs, redis_client, db, row, load, "disk full + writer SIGKILL and restart",
                     restarts=True)
        assert writer.poll() is None
    assert_exact(acc)
    assert_closed_after_window(redis_client)


# --- locked database ---------------------------------------------------------------------

def test_write_lock_spells_lose_and_double_nothing(
        procs: Procs, redis_client: redis.Redis, torture_report) -> None:
    """Another process holds SQLite's write lock (busy timeout 100 ms) for a few seconds,
    several times, under load. The integration tier checks the breaker's cycle for one
    spell (tests/integration/test_breaker_faults.py); here we count lost and doubled."""
    row = torture_report("locked database (write lock held)")
    spells = scaled(2, 8)
    db = procs.env["BETSTREAM_DB"]
    writer = procs.start("writer", **WRITER_ENV)
    load = start_load(procs, bets=scaled(15_000, 80_000), rate=1000)
    wait_committing(db, "the first commits")
    for spell in range(spells):
        before = retries(writer, "locked")
        with write_lock(db):
            wait_for(lambda: state(redis_client) == "open", 20, f"the breaker to open ({spell})")
            check_during_fault(writer, redis_client, db, 1.5)
            assert pending_count(redis_client) > 0, "the blocked batch stays pending"
        assert retries(writer, "locked") > before
        wait_committing(db, "commits to resume once the lock is released")
        wait_closed(redis_client)  # the next spell starts from full traffic
    acc = finish(procs, redis_client, db, row, load,
                 f"{spells} write-lock spells, {retries(writer, 'locked')} failed commits")
    assert acc.model.resent > 0
    assert_exact(acc)
    assert row.extra["shed"] > 0, "producers were shed during the spells"
    assert_closed_after_window(redis_client)


# --- read-only files under a live writer ---------------------------------------------------

def chattr(flag: str, files: list[str]) -> bool:
    return subprocess.run(["chattr", flag, *files], capture_output=True,
                          check=False).returncode == 0


def test_files_made_immutable_under_a_live_writer_lose_and_double_nothing(
        procs: Procs, redis_client: redis.Redis, torture_report) -> None:
    """``chattr +i`` on the ledger and its WAL while the writer is committing (even root
    cannot write them then). The integration tier covers a writer restarted onto immutable
    files; this one keeps its open handles and must not crash, ack, or lose anything."""
    row = torture_report("read-only files (chattr +i, live writer)")
    spells = scaled(1, 4)
    db = procs.env["BETSTREAM_DB"]
    writer = procs.start("writer", **WRITER_ENV)
    load = start_load(procs, bets=scaled(12_000, 60_000), rate=1000)
    wait_committing(db, "the first commits")
    files = [db, db + "-wal"]
    try:
        for spell in range(spells):
            if not chattr("+i", files):
                pytest.skip("this filesystem cannot make a file immutable (chattr +i)")
            wait_for(lambda: state(redis_client) == "open", 20, f"the breaker to open ({spell})")
            check_during_fault(writer, redis_client, db, 1.5)
            assert pending_count(redis_client) > 0, "the failed batch stays pending"
            assert chattr("-i", files)
            wait_committing(db, "commits to resume once the files are writable")
            wait_closed(redis_client)
    finally:
        chattr("-i", files)
    failed = retries(writer, "step")
    acc = finish(procs, redis_client, db, row, load,
                 f"{spells} read-only spells, {failed} failed steps")
    assert_exact(acc)
    assert_closed_after_window(redis_client)


# --- slow fsync ----------------------------------------------------------------------------

SLOW_WRITE_IOPS = 4  # writes per second the throttled disk takes: a WAL sync then needs ~1 s
SLOW_SYNC_MS = 1000  # the shim's delay per WAL sync where the kernel cannot throttle
COMMIT_MAX_MS = 300


def test_slow_fsync_opens_on_latency_sheds_and_closes_after_the_window(
        procs: Procs, redis_client: redis.Redis, tmp_path: Path, torture_report) -> None:
    """Real slow fsync: the ledger lives on ext4 over a loop device, and the kernel's blkio
    controller (cgroup v1 ``blkio.throttle.write_iops_device``, set for that device only)
    lets SLOW_WRITE_IOPS writes per second through. Every fsync of the WAL (its data and
    the ext4 journal commit) then waits in the kernel, as on a dying or saturated disk.
    Where blkio throttling is missing, the LD_PRELOAD shim sleeps in each WAL sync instead
    (the report row says which ran)."""
    row = torture_report("slow fsync")
    spells = scaled(1, 3)
    with slow_sync(tmp_path, SLOW_WRITE_IOPS, SLOW_SYNC_MS) as disk:
        db = procs.env["BETSTREAM_DB"] = disk.db
        writer = procs.start("writer", **{
            **WRITER_ENV, **disk.writer_env, "BETSTREAM_SQLITE_BUSY_TIMEOUT_MS": "10000",
            "BETSTREAM_BREAKER_COMMIT_MAX_MS": str(COMMIT_MAX_MS), "BETSTREAM_LEASE_MS": "30000"})
        load = start_load(procs, bets=scaled(12_000, 40_000), rate=800)
        wait_committing(db, "the first commits")
        slowest = 0
        for spell in range(spells):
            disk.slow(True)
            wait_for(lambda: state(redis_client) == "open", 30,
                     f"a slow commit to open it ({spell})")
            reason = transitions(redis_client)[-1]["reason"]
            assert reason.startswith("commit took"), reason
            slowest = max(slowest, int(reason.split()[2]))
            check_during_fault(writer, redis_client, db, 3)
            disk.slow(False)
            wait_committing(db, "fast commits again", 60)
            wait_closed(redis_client)
        acc = finish(procs, redis_client, db, row, load, f"{spells} slow-sync spells ({disk.how})")
        row.extra["slowest_commit_ms"] = slowest
    assert slowest > COMMIT_MAX_MS
    assert row.extra["shed"] > 0, "producers were shed while commits were slow"
    assert_exact(acc)
    assert_closed_after_window(redis_client)


# --- EIO from fsync mid-commit -------------------------------------------------------------

def test_fsync_eio_mid_commit_rolls_back_retries_and_acks_nothing_early(
        procs: Procs, redis_client: redis.Redis, tmp_path: Path, torture_report) -> None:
    """An LD_PRELOAD shim (tests/torture/fsync_fault.c, built with gcc) makes the next
    fsync of the WAL report EIO after syncing, the worst case: the frames may be on disk
    yet SQLite reports the COMMIT failed. SQLite rolls back, the writer retries the same
    batch, and no entry is acknowledged before its batch really committed."""
    row = torture_report("fsync EIO mid-commit (LD_PRELOAD shim)")
    target = scaled(5, 30)
    lib = build_shim(tmp_path)
    faults = SyncFaults(tmp_path / "faults")
    faults.dir.mkdir()
    db = procs.env["BETSTREAM_DB"]
    writer = procs.start("writer", **WRITER_ENV, **faults.env(lib))
    load = start_load(procs, bets=scaled(12_000, 60_000), rate=1000)
    wait_committing(db, "the first commits")
    injected = 0
    while retries(writer, "disk I/O error") < target:
        assert injected < target * 4, "EIO keeps missing the commits"
        faults.fail_next()
        wait_for(lambda: not faults.failure_pending(), 20, "a WAL sync to report EIO")
        injected += 1
        assert acked_without_outcome(redis_client, db) == [], "acked only after a commit"
        wait_committing(db, "commits to resume after the EIO")
    failed = retries(writer, "disk I/O error")
    acc = finish(procs, redis_client, db, row, load,
                 f"{injected} fsync EIO injected, {failed} failed commits")
    assert_exact(acc)


def test_fsync_eio_then_crash_finds_the_maybe_committed_batch_once(
        procs: Procs, redis_client: redis.Redis, tmp_path: Path, torture_report) -> None:
    """fsync reports EIO after the WAL frames reached the disk; the writer rolls back and
    waits to retry, and is SIGKILLed before it does. On restart SQLite's WAL recovery
    finds the "failed" batch committed after all. Its entries were never acked: they are
    redelivered, found in the ledger, and confirmed with their stored outcome, once."""
    row = torture_report("fsync EIO then writer SIGKILL")
    cycles = scaled(2, 10)
    lib = build_shim(tmp_path)
    faults = SyncFaults(tmp_path / "faults")
    faults.dir.mkdir()
    db = procs.env["BETSTREAM_DB"]
    env = {**RESTARTED_ENV, **faults.env(lib),
           "BETSTREAM_RETRY_BACKOFF_MIN_MS": "3000", "BETSTREAM_RETRY_BACKOFF_MAX_MS": "3000"}
    writer = procs.start("writer", **env)
    load = start_load(procs, bets=scaled(8_000, 40_000), rate=600)
    wait_committing(db, "the first commits")
    resurrected: list[int] = []
    for cycle in range(cycles):
        wait_for(lambda w=writer: inject_until_a_commit_fails(faults, w), 60,
                 f"an EIO to fail a commit (cycle {cycle})")
        failed_batch = last_failed_batch(writer)
        writer.kill()  # within the 3 s backoff: the retry never ran
        writer.wait(10)
        writer = procs.start("writer", **env)
        wait_committing(db, "the restarted writer to commit")
        if query(db, "SELECT 1 FROM batches WHERE batch_no = ?", (failed_batch,)):
            resurrected.append(failed_batch)
    acc = finish(procs, redis_client, db, row, load,
                 f"{cycles} fsync EIO + writer SIGKILL", restarts=True)
    row.extra["failed_batches_found_committed"] = len(resurrected)
    assert resurrected, "WAL recovery brought back at least one batch reported as failed"
    assert_exact(acc)


def inject_until_a_commit_fails(faults: SyncFaults, writer: subprocess.Popen) -> bool:
    """One EIO; true once it hit a commit (it may hit the checkpointer's WAL sync)."""
    before = retries(writer, "disk I/O error")
    faults.fail_next()
    wait_for(lambda: not faults.failure_pending(), 20, "a WAL sync to report EIO")
    try:
        wait_for(lambda: retries(writer, "disk I/O error") > before, 1, "a failed commit")
    except AssertionError:
        return False
    return True


def last_failed_batch(writer: subprocess.Popen) -> int:
    lines = [ln for ln in Path(writer.log_path).read_text().splitlines()
             if '"writer.retry"' in ln and "disk I/O error" in ln]
    return int(json.loads(lines[-1])["error"].split()[1])
