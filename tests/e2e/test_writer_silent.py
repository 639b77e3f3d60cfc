"""A writer cannot die silently.

A writer killed by a signal (SIGBUS on a ledger whose ``-shm`` cannot be written) logs
nothing and moves the breaker no more: producers would keep sending until their intents
turned ``stale``. So a fatal signal leaves a traceback in the log (``faulthandler``, in
the writer and in its admission child), and a writer silent past
``WRITER_SILENT_MAX_MS`` while intents wait opens the breaker. Here the watcher runs in the
test, as the gateway runs it; a returning writer closes the breaker as after any fault.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from producer.breaker_state import CLOSED, HALF_OPEN, OPEN, BreakerLimits
from producer.client import Producer
from producer.contract import new_deposit, now_ms
from producer.errors import BreakerOpen
from producer.signing import Keyring
from tests.conftest import ROOT, Procs, wait_for
from tests.e2e.gateway_support import start_pipeline
from tests.support import drained, outcome_of
from workers.adapters.breaker_store import BreakerStore
from workers.adapters.writer_health import writer_health
from workers.adapters.writer_silence import WriterSilence

SILENT_MAX_MS = 2_000
CHECK_INTERVAL_MS = 100
SCHEDULING_SLACK_MS = 1_000  # a loaded test machine: the watcher's look may come late
LIMITS = BreakerLimits(cooldown_s=0.5, stability_s=1.0)
WRITER_ENV = {
    "BETSTREAM_HEALTH_TTL_MS": "1500",  # a beat every 500 ms
    "BETSTREAM_LEASE_MS": "1000", "BETSTREAM_STANDBY_POLL_MS": "100",
    "BETSTREAM_WRITER_SILENT_MAX_MS": str(SILENT_MAX_MS),
    "BETSTREAM_BREAKER_COOLDOWN_S": str(LIMITS.cooldown_s),
    "BETSTREAM_BREAKER_STABILITY_S": str(LIMITS.stability_s),
    "BETSTREAM_BREAKER_SYNC_MS": "50",
}
WAITING = 25
FATAL_SIGNAL_WAIT_S = 30


def test_a_killed_writer_with_intents_waiting_opens_the_breaker_within_the_bound(
        procs: Procs, redis_client: redis.Redis, producer: Producer, keyring: Keyring,
        env: dict[str, str]) -> None:
    store = BreakerStore(redis_client, LIMITS)
    watcher = WriterSilence(redis_client, store, SILENT_MAX_MS, "test watcher")
    writer = procs.start("writer", **WRITER_ENV)
    wait_for(lambda: writer_health(redis_client).ok, 30, "the writer to lead")
    first = new_deposit(7, 100)
    producer.submit(first)
    wait_for(lambda: drained(redis_client) and watcher.check(now_ms()) is None
             and watcher.silence.last_beat_ms, 30, "the writer to commit, seen alive")

    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait(10)
    killed_ms = now_ms()
    intents = [new_deposit(100 + i, 10) for i in range(WAITING)]
    for intent in intents:
        producer.submit(intent)

    tripped = wait_for(lambda: watcher.check(now_ms()), 30, "the watcher to open the breaker",
                       interval_s=CHECK_INTERVAL_MS / 1000)
    assert tripped.state == OPEN and not tripped.forced
    assert tripped.since_ms - killed_ms <= SILENT_MAX_MS + CHECK_INTERVAL_MS + SCHEDULING_SLACK_MS
    assert tripped.since_ms - watcher.silence.last_beat_ms >= SILENT_MAX_MS
    assert tripped.reason.startswith("writer silent for ")
    assert tripped.reason.endswith(f" ms with {WAITING} intents waiting (noticed by test "
                                   f"watcher)")
    with pytest.raises(BreakerOpen):
        Producer(redis_client, keyring).submit(new_deposit(8, 100))  # shed, not fed

    writer = procs.start("writer", **WRITER_ENV)  # back: it drains and closes the breaker
    wait_for(lambda: drained(redis_client) and store.load().breaker.state == CLOSED, 60,
             "the returning writer to drain and close the breaker")
    assert {outcome_of(env["BETSTREAM_DB"], i.id)["status"] for i in intents} == {"accepted"}
    states = [t["state"] for t in reversed(store.transitions())]
    assert states == [OPEN, HALF_OPEN, CLOSED], "not forced: cool-down, probe, stability"


def test_the_gateway_opens_the_breaker_when_a_killed_writer_leaves_traffic_waiting(
        procs: Procs, redis_client: redis.Redis, producer: Producer) -> None:
    """No watcher in the test: the running gateway notices, and its health says so."""
    pipe = start_pipeline(procs, **WRITER_ENV,
                          BETSTREAM_WRITER_SILENCE_CHECK_INTERVAL_MS=str(CHECK_INTERVAL_MS))
    writer = next(p for p in procs.started if "writer" in p.args)
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait(10)
    killed_ms = now_ms()
    producer.submit_many([new_deposit(200 + i, 10) for i in range(WAITING)])

    def breaker() -> dict | None:
        state = httpx.get(f"{pipe.ops}/health", timeout=5).json()["breaker"]
        return state if state["state"] == OPEN else None

    opened = wait_for(breaker, 30, "the gateway to open the breaker", interval_s=0.05)
    assert opened["since_ms"] - killed_ms <= (SILENT_MAX_MS + CHECK_INTERVAL_MS
                                              + SCHEDULING_SLACK_MS)
    assert opened["reason"].startswith("writer silent for ") and not opened["forced"]
    assert f"{WAITING} intents waiting (noticed by gateway " in opened["reason"]
    assert httpx.get(f"{pipe.http}/health").json() == {"ok": False}


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (faulthandler installed one)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_fatal_signal_leaves_a_traceback_in_the_writers_log(
        procs: Procs, redis_client: redis.Redis) -> None:
    writer = procs.start("writer")
    wait_for(lambda: writer_health(redis_client).ok, 30, "the writer to lead")
    assert _catches(writer.pid, signal.SIGBUS), "faulthandler is enabled"
    os.kill(writer.pid, signal.SIGBUS)
    assert writer.wait(FATAL_SIGNAL_WAIT_S) == -signal.SIGBUS  # 135 in a shell
    log = Path(writer.log_path).read_text()
    assert "Fatal Python error: Bus error" in log and "most recent call first" in log


def test_a_fatal_signal_leaves_a_traceback_from_the_admission_child(
        env: dict[str, str]) -> None:
    """The child is started by the writer (``python -m``), not through the cli."""
    child = subprocess.Popen([sys.executable, "-m", "workers.writer.admission_child"],
                             cwd=ROOT, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _catches(child.pid, signal.SIGBUS) or child.poll() is not None, 30,
                 "the child to enable faulthandler")
        os.kill(child.pid, signal.SIGBUS)
        _, stderr = child.communicate(timeout=FATAL_SIGNAL_WAIT_S)
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == -signal.SIGBUS
    assert b"Fatal Python error: Bus error" in stderr
