"""Crash storm: two producers send deposits, bets, withdrawals, settlements and deliberate
re-sends while the writer and the confirmer are SIGKILLed at random moments and restarted.

Afterwards every intent id in the stream has exactly one outcome (plus one ``id_conflict``
row per conflicting re-use of an id), balances equal an independent model replayed in
stream order, every committed outcome was confirmed, and ``betstream audit`` passes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

import redis

from producer import constants as c
from producer.client import entry_fields
from producer.contract import encode_body, new_nonce, now_ms
from producer.signing import Keyring
from tests.conftest import Procs, wait_for
from tests.support import drained
from tests.torture.exactly_once import verify
from tests.torture.report import scaled

USERS = scaled(30, 200)
DEPOSIT = scaled(200_000, 1_000_000)  # per user and producer: most bets are affordable
PER_PRODUCER = scaled(1_500, 49_900)  # 2 x (users + this) intents: ~3k short, 100k full
RATE_PER_PRODUCER = scaled(500, 1_500)  # intents/s, so the kills land while load flows
WRITER_KILLS_MIN = scaled(3, 20)
CONFIRMER_KILLS_MIN = scaled(1, 5)
CONFLICTS_PER_KILL = 2  # same id, another body, sent by the test between kills
WRITER_ENV = {"BETSTREAM_LEASE_MS": "1000", "BETSTREAM_STANDBY_POLL_MS": "100",
              "BETSTREAM_BATCH_SIZE_MAX": "200",
              # every outcome, re-published ones included, must stay on the stream to check
              "BETSTREAM_CONFIRMATIONS_LEN_MAX": "2000000"}
CONFIRMER_ENV = {"BETSTREAM_CONFIRM_LEASE_MS": "1000"}  # a new confirmer takes over in 1 s


def hard_kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its children (RQ's scheduler), as a power cut would."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def leads(client: redis.Redis, proc: subprocess.Popen) -> bool:
    holder = client.get(c.KEY_WRITER_LEASE)
    prefix = f"writer-{socket.gethostname()}-{proc.pid}:"
    return bool(holder) and holder.decode().startswith(prefix)


@dataclass
class Storm:
    """Writer and confirmer processes, and the faults injected into them."""

    procs: Procs
    client: redis.Redis
    keyring: Keyring
    rng: random.Random
    writer: subprocess.Popen | None = None
    confirmer: subprocess.Popen | None = None
    writer_kills: int = 0
    confirmer_kills: int = 0
    conflicts: int = 0

    def start(self) -> None:
        self.writer = self.procs.start("writer", **WRITER_ENV)
        self.confirmer = self.procs.start("confirmer", **WRITER_ENV, **CONFIRMER_ENV)

    def strike(self) -> None:
        """Wait until the writer leads, let it work a random while, SIGKILL it, restart;
        now and then SIGKILL the confirmer too, at a moment of its own."""
        wait_for(lambda: leads(self.client, self.writer), 60, "the restarted writer to lead")
        if self.rng.random() < 0.4 or self.confirmer_kills < self.writer_kills // 4:
            time.sleep(self.rng.uniform(0.05, 0.5))  # a random moment, not a wait
            hard_kill(self.confirmer)
            self.confirmer_kills += 1
            self.confirmer = self.procs.start("confirmer", **WRITER_ENV, **CONFIRMER_ENV)
        time.sleep(self.rng.uniform(0.05, 0.8))  # a random moment to crash at, not a wait
        hard_kill(self.writer)
        self.writer_kills += 1
        self.send_conflicts()
        self.writer = self.procs.start("writer", **WRITER_ENV)

    def send_conflicts(self) -> None:
        """Re-use the id of a random earlier intent with another body (signed correctly)."""
        earlier = self.client.xrevrange(c.STREAM_INTENTS, count=500)
        for _, fields in self.rng.sample(earlier, min(CONFLICTS_PER_KILL, len(earlier))):
            body = json.loads(fields[b"body"])
            body.update(nonce=new_nonce(), issued_at=now_ms())
            key = self.keyring.get(fields[b"kid"].decode())
            self.client.xadd(c.STREAM_INTENTS, entry_fields(key, encode_body(body)))
            self.conflicts += 1


def test_crash_storm_loses_and_doubles_nothing(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str], keyring: Keyring,
        torture_report) -> None:
    row = torture_report("crash storm (writer + confirmer SIGKILL)")
    storm = Storm(procs, redis_client, keyring, random.Random())
    storm.start()
    load_args = ("load", "--users", str(USERS), "--bets", str(PER_PRODUCER), "--rate",
                 str(RATE_PER_PRODUCER), "--withdrawals", "0.05", "--settles", "0.2",
                 "--duplicates", "0.02", "--deposit", str(DEPOSIT), "--quiet")
    # the same users from both producers: their intents interleave in the stream
    producers = [procs.start(*load_args, "--seed", str(s), name=f"load{s}") for s in (1, 2)]
    while (storm.writer_kills < WRITER_KILLS_MIN or storm.confirmer_kills < CONFIRMER_KILLS_MIN
           or any(p.poll() is None for p in producers)):
        storm.strike()
    row.faults = (f"{storm.writer_kills} writer SIGKILL, {storm.confirmer_kills} confirmer "
                  f"SIGKILL, {storm.conflicts} conflicting re-uses of an id")
    assert all(p.wait(120) == 0 for p in producers), "both producers finished cleanly"
    wait_for(lambda: drained(redis_client), scaled(120, 600), "the writer to drain the stream")
    verify(env["BETSTREAM_DB"], redis_client, procs, row)
    model = row.extra["model"]
    for verdict in ("accepted", "unknown_bet", "already_settled", "settled", "resent",
                    "id_conflict"):
        assert model.get(verdict, 0) > 0, f"the storm exercised {verdict}"
