"""Storage faults made real for the torture tier: a small tmpfs that fills up, an ext4
loop device whose writes are throttled (slow fsync), and an LD_PRELOAD shim that slows
or fails a process's WAL syncs. Plus the accounting every scenario reports: lost,
doubled, audit, and "acknowledged but not durable"."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import redis

from producer import constants as c
from tests.conftest import KEYRING, Procs, wait_for
from tests.e2e.model import Model, replay
from tests.support import drained, query

SHIM_SOURCE: Final = Path(__file__).with_name("fsync_fault.c")
BLKIO_WRITE_IOPS: Final = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device")
PENDING_MAX: Final = 1_000_000  # entries listed from the writers' pending list
# Room for the WAL's high-water mark (up to the store's journal_size_limit, 256 MiB; it
# reached 175 MiB under 2,000 intents/s here): a smaller disk fills up before it slows.
LOOP_DISK_MB: Final = 512


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@dataclass
class Tmpfs:
    """A tmpfs of our own: ``resize`` grows it in place (files and open handles stay)."""

    path: Path

    def resize(self, size: str) -> None:
        res = run("mount", "-o", f"remount,size={size}", str(self.path))
        assert res.returncode == 0, f"remount {self.path} size={size}: {res.stderr}"


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Tmpfs]:
    """Mount a tmpfs of ``size`` at ``path``; skip when this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    res = run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield Tmpfs(path)
    finally:
        unmount(path)


def unmount(path: Path) -> None:
    """Unmount, lazily if a killed process still holds a file there (it is dying)."""
    for _ in range(50):
        if run("umount", str(path)).returncode == 0:
            return
        time.sleep(0.1)
    run("umount", "-l", str(path))


@dataclass
class LoopDisk:
    """An ext4 filesystem on a loop device; ``throttle(iops)`` caps its writes (0: none)."""

    path: Path
    device: str
    majmin: str

    def throttle(self, write_iops: int) -> None:
        BLKIO_WRITE_IOPS.write_text(f"{self.majmin} {write_iops}\n")


@contextmanager
def throttled_loop_disk(base: Path, size_mb: int) -> Iterator[LoopDisk]:
    """ext4 on a loop device, writes throttled by the blkio controller (cgroup v1) on the
    root cgroup for this device only: every write to it (the writer's WAL, the journal
    commit of jbd2, writeback) waits, so fsync is really slow. Skips when unavailable."""
    if not BLKIO_WRITE_IOPS.exists():
        pytest.skip(f"no blkio write throttling here ({BLKIO_WRITE_IOPS} is missing)")
    image, mnt = base / "disk.img", base / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 2**20)
    if run("mkfs.ext4", "-q", str(image)).returncode != 0:
        pytest.skip("mkfs.ext4 is not available")
    res = run("losetup", "-f", "--show", str(image))
    if res.returncode != 0:
        pytest.skip(f"no loop device available: {res.stderr.strip()}")
    device = res.stdout.strip()
    disk = LoopDisk(mnt, device, Path(f"/sys/block/{Path(device).name}/dev").read_text().strip())
    try:
        if run("mount", device, str(mnt)).returncode != 0:
            pytest.skip(f"cannot mount {device}")
        yield disk
    finally:
        disk.throttle(0)
        unmount(mnt)
        run("losetup", "-d", device)


@dataclass
class SlowSync:
    """Where the ledger goes and how to make its fsync slow, by the most real means here."""

    db: str
    writer_env: dict[str, str]
    how: str
    _slow: Callable[[bool], None]

    def slow(self, on: bool) -> None:
        self._slow(on)


@contextmanager
def slow_sync(base: Path, write_iops: int, delay_ms: int) -> Iterator[SlowSync]:
    """The kernel throttling a loop disk when it can (blkio, cgroup v1); otherwise (or with
    BETSTREAM_TORTURE_SLOW_SYNC=shim) the LD_PRELOAD shim sleeping ``delay_ms`` in each
    WAL sync of the writer process."""
    if BLKIO_WRITE_IOPS.exists() and os.environ.get("BETSTREAM_TORTURE_SLOW_SYNC") != "shim":
        with throttled_loop_disk(base, LOOP_DISK_MB) as disk:
            yield SlowSync(str(disk.path / "ledger.sqlite3"), {},
                           f"blkio-throttled loop disk, {write_iops} write IOPS",
                           lambda on: disk.throttle(write_iops if on else 0))
        return
    faults = SyncFaults(base / "faults")
    faults.dir.mkdir()
    yield SlowSync(str(base / "ledger.sqlite3"), faults.env(build_shim(base)),
                   f"LD_PRELOAD shim, {delay_ms} ms per WAL sync",
                   lambda on: faults.delay(delay_ms if on else 0))


def build_shim(out_dir: Path) -> Path:
    """Compile fsync_fault.c; skips when no C compiler is installed."""
    lib = out_dir / "fsync_fault.so"
    res = run("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(lib), str(SHIM_SOURCE), "-ldl")
    if res.returncode != 0:
        pytest.skip(f"cannot build the fsync shim with gcc: {res.stderr.strip()[:200]}")
    return lib


@dataclass
class SyncFaults:
    """The shim's control files (see fsync_fault.c)."""

    dir: Path

    def env(self, lib: Path) -> dict[str, str]:
        return {"LD_PRELOAD": str(lib), "BETSTREAM_FAULT_DIR": str(self.dir)}

    def delay(self, ms: int) -> None:
        (self.dir / "delay_ms").write_text(str(ms))

    def fail_next(self) -> None:
        (self.dir / "eio").touch()

    def failure_pending(self) -> bool:
        return (self.dir / "eio").exists()


def acked_without_outcome(client: redis.Redis, db: str) -> list[str]:
    """Entries the writer acknowledged whose intent has no durable outcome.

    Redis is read first, SQLite second: an entry is acked only after its batch committed,
    so anything acked at the first read must already be in the file at the second.
    """
    groups = {g["name"].decode(): g for g in client.xinfo_groups(c.STREAM_INTENTS)}
    last = groups[c.GROUP_WRITERS]["last-delivered-id"].decode()
    pending = {p["message_id"].decode() for p in client.xpending_range(
        c.STREAM_INTENTS, c.GROUP_WRITERS, "-", "+", PENDING_MAX)}
    delivered = client.xrange(c.STREAM_INTENTS, "-", last)
    acked = {eid.decode(): _intent_id(f) for eid, f in delivered if eid.decode() not in pending}
    stored = {i for (i,) in query(db, "SELECT id FROM outcomes")}
    return sorted(eid for eid, intent in acked.items() if intent not in stored)


def _intent_id(fields: dict[bytes, bytes]) -> str:
    return json.loads(fields[b"body"])["id"]


def pending_count(client: redis.Redis) -> int:
    return int(client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)["pending"])


@dataclass(frozen=True)
class Accounting:
    intents: int
    lost: int
    doubled: int
    audit: str
    model: Model
    balances_match: bool
    outcomes_match: bool
    audit_output: str


def account(procs: Procs, client: redis.Redis, db: str, drain_s: float = 120) -> Accounting:
    """After the fault: drain, then count against the independent model replayed from
    the stream (lost = ids with no outcome, doubled = extra outcomes of one id)."""
    wait_for(lambda: drained(client), drain_s, "the writer to drain the stream")
    model = replay(client, {k: v["secret"].encode() for k, v in KEYRING.items()})
    counts = dict(query(db, "SELECT id, COUNT(*) FROM outcomes GROUP BY id"))
    lost = len(set(model.outcomes) - set(counts))
    doubled = sum(n - 1 for n in counts.values() if n > 1)
    players = dict(query(db, "SELECT id, balance FROM users WHERE id > 0"))
    stored = dict(query(db, "SELECT id, COALESCE(reason, status) FROM outcomes"))
    audit = procs.run("audit")
    return Accounting(model.entries, lost, doubled, "pass" if audit.returncode == 0 else "FAIL",
                      model, players == model.balances, stored == model.outcomes,
                      audit.stdout + audit.stderr)
