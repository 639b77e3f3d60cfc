"""SIGKILL the writer's admission child while it drains a backlog: nothing lost or doubled.

Each kill costs the batch the child had read: its entries are pending under the writer,
which reads its own pending entries first on its next loop, reads in process meanwhile and
then starts a new child.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter

import redis

from producer.client import Producer
from producer.contract import new_deposit
from tests.conftest import Procs, wait_for
from tests.support import drained, log_events, query

BACKLOG = 60_000  # deposits: several seconds of work, so every kill lands mid-drain
USERS = 300
KILLS = 3


def _child_of(pid: int) -> int | None:
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "workers.writer.admission_child"],
                           capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def test_killing_the_admission_child_loses_and_doubles_nothing(
        procs: Procs, redis_client: redis.Redis, producer: Producer,
        env: dict[str, str]) -> None:
    amounts = Counter()
    intents = []
    for n in range(BACKLOG):
        intent = new_deposit(1 + n % USERS, 1 + n % 7)
        amounts[intent.user_id] += intent.amount
        intents.append(intent)
    producer.submit_many(intents)
    writer = procs.start("writer", BETSTREAM_LEASE_MS="1000", BETSTREAM_BATCH_SIZE_MAX="500",
                         BETSTREAM_ADMISSION_RESTART_MS="200")
    killed: list[int] = []
    for _ in range(KILLS):
        child = wait_for(lambda: (pid := _child_of(writer.pid)) not in (None, *killed) and pid,
                         30, "an admission child (a new one after each kill)", interval_s=0.01)
        os.kill(child, signal.SIGKILL)
        killed.append(child)
    assert not drained(redis_client), "every kill landed while the backlog was draining"

    wait_for(lambda: drained(redis_client), 120, "the writer to drain everything")
    assert writer.poll() is None, "the writer itself kept running"
    db = env["BETSTREAM_DB"]
    per_id = Counter(dict(query(db, "SELECT id, COUNT(*) FROM outcomes GROUP BY id")))
    assert set(per_id) == {i.id for i in intents} and set(per_id.values()) == {1}
    assert query(db, "SELECT COUNT(*) FROM outcomes WHERE status != 'accepted'") == [(0,)]
    assert dict(query(db, "SELECT id, balance FROM users WHERE id > 0")) == dict(amounts)
    failures = [e for e in log_events(writer.log_path) if e.get("event") == "admission.failed"]
    assert len(failures) >= KILLS, "each kill was noticed and logged"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
