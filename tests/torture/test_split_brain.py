"""Split brain: the leading writer is frozen (SIGSTOP) past its lease under load, another
writer takes the lease and the fencing epoch and commits, then the frozen one wakes up
(SIGCONT) believing it still leads. It must not commit anything more, must step down to
standby and say so, and nothing may be lost or doubled.

tests/integration/test_single_writer.py fences a paused writer inside one process; this is
the same race between real processes, with the pause landing wherever it lands.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass

import redis

from producer import constants as c
from producer.client import Producer
from producer.contract import new_deposit
from producer.signing import Keyring
from tests.conftest import Procs, wait_for
from tests.support import drained, log_events, outcome_of, query
from tests.torture.exactly_once import verify
from tests.torture.report import scaled

USERS = scaled(20, 100)
DEPOSIT = scaled(200_000, 1_000_000)  # per user and producer: most bets are affordable
PER_PRODUCER = scaled(1_500, 9_900)
RATE_PER_PRODUCER = scaled(150, 400)  # intents/s: the load outlasts the pauses (10 s short)
PAUSES = scaled(2, 6)  # alternately mid-commit and at a random moment
LEASE_MS = 1000
LOCKED_OUT_S = 3  # the write lock held this long by nobody awake: the frozen writer has it
WRITER_ENV = {"BETSTREAM_LEASE_MS": str(LEASE_MS), "BETSTREAM_STANDBY_POLL_MS": "100",
              "BETSTREAM_BATCH_SIZE_MAX": "100", "BETSTREAM_CONFIRMATIONS_LEN_MAX": "2000000",
              # a writer frozen waiting for the write lock still waits for it once woken
              "BETSTREAM_SQLITE_BUSY_TIMEOUT_MS": "10000",
              # a commit frozen mid-way opens the breaker (rightly): keep its recovery short
              "BETSTREAM_BREAKER_COOLDOWN_S": "0.5", "BETSTREAM_BREAKER_STABILITY_S": "1"}


@dataclass
class Pause:
    """One round: who was frozen, who took over, with which epochs."""

    frozen: str
    frozen_epoch: int
    successor: str
    mid_commit: bool
    successor_epoch: int = 0
    step_down: str = ""  # how the frozen writer stepped down when it woke up
    held_lock: bool = False  # frozen inside its transaction: woken before anyone could lead


def epoch_of(log_path: str) -> int:
    """The epoch of the writer's latest ``writer.leading`` (0 if it never led)."""
    leading = log_events(log_path, "writer.leading")
    return int(leading[-1]["epoch"]) if leading else 0


def epochs_led(log_path: str) -> set[int]:
    return {int(e["epoch"]) for e in log_events(log_path, "writer.leading")}


def current_leader(client: redis.Redis, db: str,
                   writers: dict[str, subprocess.Popen]) -> tuple[str, int] | None:
    """The writer holding the lease whose last ``writer.leading`` took the ledger's epoch."""
    value = client.get(c.KEY_WRITER_LEASE)
    name = value.decode().split(":", 1)[0] if value else ""
    if name not in writers:
        return None
    epoch = query(db, "SELECT value FROM meta WHERE key = 'epoch'")[0][0]
    return (name, epoch) if epoch_of(writers[name].log_path) == epoch else None


def signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    os.killpg(proc.pid, sig)


def pause_leader(procs: Procs, client: redis.Redis, producer: Producer, db: str,
                 writers: dict[str, subprocess.Popen], rng: random.Random,
                 mid_commit: bool) -> Pause:
    """Freeze the leader past its lease; the other writer (started now if there is none)
    must lead with a newer epoch and commit; then wake the frozen one up."""
    leader, epoch = wait_for(lambda: current_leader(client, db, writers), 30,
                             "a writer to hold the lease and the epoch")
    frozen = writers[leader]
    pause = Pause(leader, epoch, "", mid_commit)
    seen = len(log_events(frozen.log_path, "writer.fenced_out"))
    if mid_commit:
        freeze_mid_commit(client, db, leader, frozen)
    else:
        time.sleep(rng.uniform(0.05, 0.6))  # a random moment to freeze it at, not a wait
        signal_group(frozen, signal.SIGSTOP)
    try:
        if len(writers) == 1:
            writers["wB"] = procs.start("writer", "--consumer", "wB", name="wB", **WRITER_ENV)
        pause.successor = next(name for name in writers if name != leader)
        take_over(pause, writers, frozen, db)
        marker = new_deposit(rng.randint(1, USERS), 1)  # proves the new leader commits
        producer.submit(marker)
        wait_for(lambda: outcome_of(db, marker.id), 30, "the new leader to commit")
        epoch = batch_epoch(db, marker.id)
        if pause.held_lock:  # woken early, the two may have traded the lead: who has it now
            pause.successor_epoch = epoch
            pause.successor = next(name for name, w in writers.items()
                                   if epoch in epochs_led(w.log_path))
        assert epoch == pause.successor_epoch, "the new leader commits with its new epoch"
        time.sleep(rng.uniform(0, 0.5))  # frozen a little longer still
    finally:
        signal_group(frozen, signal.SIGCONT)
    if pause.successor != pause.frozen:
        pause.step_down = wait_for(lambda: stepped_down(frozen.log_path, pause.successor, seen),
                                   30, "the woken writer to step down")
    return pause


def take_over(pause: Pause, writers: dict[str, subprocess.Popen],
              frozen: subprocess.Popen, db: str) -> None:
    """The other writer leads with a newer epoch; unless the leader froze inside its
    transaction: it then holds SQLite's write lock and nobody can take the epoch until it
    wakes (and finishes the batch it is entitled to), so it is woken up early."""
    successor = writers[pause.successor]

    def newer(log_path: str) -> int:
        epoch = epoch_of(log_path)
        return epoch if epoch > pause.frozen_epoch else 0

    held_since: list[float] = []

    def led_or_locked_out() -> tuple[str, int] | None:
        if epoch := newer(successor.log_path):
            return "led", epoch
        if not write_lock_held(db):
            held_since.clear()
        elif not held_since:
            held_since.append(time.monotonic())
        elif time.monotonic() - held_since[0] > LOCKED_OUT_S:
            return "locked out", 0
        return None

    state, pause.successor_epoch = wait_for(led_or_locked_out, 60,
                                            "the other writer to take the lead")
    if state == "led":
        return
    pause.held_lock = True
    signal_group(frozen, signal.SIGCONT)
    pause.successor_epoch, pause.successor = wait_for(
        lambda: next(((newer(w.log_path), name) for name, w in writers.items()
                      if newer(w.log_path)), None), 30, "a writer to lead at a newer epoch")


def write_lock_held(db: str) -> bool:
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def freeze_mid_commit(client: redis.Redis, db: str, leader: str,
                      frozen: subprocess.Popen) -> bool:
    """Hold the ledger's write lock until the leader has decided a batch it cannot commit
    yet (its nonces are claimed: only deciding and BEGIN IMMEDIATE remain), freeze it
    there, and let go: once woken it goes on to commit that batch with its old epoch."""
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        wait_for(lambda: decided_batch(client, db, leader), 30, f"{leader} to decide a batch")
        signal_group(frozen, signal.SIGSTOP)
        lock.execute("ROLLBACK")
    finally:
        lock.close()


def decided_batch(client: redis.Redis, db: str, consumer: str) -> bool:
    """The consumer holds first-time intents and has claimed each one's nonce for its id.

    (Entries that already have outcomes are a batch it committed and is acknowledging.)"""
    held = client.xpending_range(c.STREAM_INTENTS, c.GROUP_WRITERS, min="-", max="+",
                                 count=1000, consumername=consumer)
    if not held:
        return False
    bodies = [json.loads(fields[b"body"]) | {"kid": fields[b"kid"].decode()}
              for x in held for _, fields in client.xrange(c.STREAM_INTENTS, x["message_id"],
                                                           x["message_id"])]
    marks = ",".join("?" * len(bodies))
    stored = {i for (i,) in query(db, f"SELECT id FROM outcomes WHERE id IN ({marks})",
                                  tuple(b["id"] for b in bodies))}
    fresh = [b for b in bodies if b["id"] not in stored]
    holders = [client.get(c.nonce_key(b["kid"], b["nonce"])) for b in fresh]
    return bool(fresh) and all(h == b["id"].encode() for h, b in zip(holders, fresh))


def batch_epoch(db: str, intent_id: str) -> int:
    return query(db, "SELECT b.epoch FROM outcomes o JOIN batches b USING (batch_no) "
                     "WHERE o.id = ?", (intent_id,))[0][0]


def stepped_down(log_path: str, successor: str, seen: int) -> str | None:
    """Since waking up, the writer logged that it was fenced out (or lost its lease), then
    went standby naming the successor as the lease holder."""
    log = log_events(log_path, None)
    fenced = [i for i, e in enumerate(log) if e["event"] == "writer.fenced_out"][seen:]
    if not fenced:
        return None
    if not any(e["event"] == "writer.standby"
               and str(e.get("lease_holder", "")).startswith(f"{successor}:")
               for e in log[fenced[0]:]):
        return None
    return "fencing epoch" if "fencing epoch" in log[fenced[0]]["error"] else "lease lost"


def test_frozen_writer_wakes_up_fenced_out_and_nothing_is_doubled(
        procs: Procs, redis_client: redis.Redis, keyring: Keyring, env: dict[str, str],
        torture_report) -> None:
    row = torture_report("split brain (leader SIGSTOPped past its lease, SIGCONT)")
    db, rng = env["BETSTREAM_DB"], random.Random()
    # the test's own marker intents ignore the breaker (a slow frozen commit may open it)
    producer = Producer(redis_client, keyring, shed=False)
    writers = {"wA": procs.start("writer", "--consumer", "wA", name="wA", **WRITER_ENV)}
    procs.start("confirmer", **WRITER_ENV)
    load_args = ("load", "--users", str(USERS), "--bets", str(PER_PRODUCER), "--rate",
                 str(RATE_PER_PRODUCER), "--withdrawals", "0.05", "--settles", "0.2",
                 "--duplicates", "0.02", "--deposit", str(DEPOSIT), "--quiet")
    producers = [procs.start(*load_args, "--seed", str(s), name=f"load{s}") for s in (1, 2)]
    pauses, under_load = [], []
    for n in range(PAUSES):
        under_load.append(any(p.poll() is None for p in producers))
        pauses.append(pause_leader(procs, redis_client, producer, db, writers, rng, n % 2 == 0))
    row.faults = f"{len(pauses)} leader SIGSTOP past a {LEASE_MS} ms lease, then SIGCONT"
    row.extra["pauses"] = [f"{p.frozen}->{p.successor}: {p.step_down or 'kept the lead'}"
                           f"{' (had frozen holding the write lock)' if p.held_lock else ''}"
                           for p in pauses]
    row.extra["paused_under_load"] = sum(under_load)
    assert under_load[0], "the first pause happened under load"
    assert all(p.wait(120) == 0 for p in producers), "both producers finished cleanly"
    wait_for(lambda: drained(redis_client), 120, "the leader to drain the stream")
    verify(db, redis_client, procs, row)

    epochs = [e for (e,) in query(db, "SELECT epoch FROM batches ORDER BY batch_no")]
    assert epochs == sorted(epochs), "no batch of an older epoch after one of a newer"
    for p in pauses:
        first_new = query(db, "SELECT MIN(batch_no) FROM batches WHERE epoch = ?",
                          (p.successor_epoch,))[0][0]
        late = query(db, "SELECT COUNT(*) FROM batches WHERE epoch = ? AND batch_no > ?",
                     (p.frozen_epoch, first_new))[0][0]
        assert late == 0, f"{p.frozen} committed after {p.successor} took the epoch"
    assert all(w.poll() is None for w in writers.values()), "both writers still run"
    assert all(p.step_down.startswith("fencing epoch") for p in pauses if p.mid_commit), (
        "a writer frozen mid-batch was refused by the fencing epoch when it tried to commit")
