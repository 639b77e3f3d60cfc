"""Redis loses all its data (FLUSHALL) in the middle of a load, with the writer, the
confirmer and the gateway running.

- Every committed outcome is published again on ``betstream:confirmations``, and a
  subscriber connected throughout sees every outcome of its user.
- ``betstream reconcile`` lists as lost exactly the intents Redis acknowledged but the
  writer had not committed, all acknowledged before the flush; nothing committed is among
  them, nothing is doubled.
- The writer reports the loss (``redis.data_lost``) and goes on.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis

from producer.journal import read_journal
from tests.conftest import Procs, free_port, wait_for
from tests.e2e.gateway_support import Collector, Pipeline, gateway_args
from tests.support import confirmations, log_events, query
from tests.torture.report import scaled
from tests.torture.test_redis_restart import (
    DRAIN_S,
    WRITER_ENV,
    journal_lines,
    reconcile,
    start_loads,
    start_pipeline,
    wait_drained,
)

HOT_USER = 101  # the first user of the first load: it gets a share of every kind
UNREAD_MIN = 50  # acknowledged entries left unread when Redis loses them
BATCH_SIZE_MAX = int(WRITER_ENV["BETSTREAM_BATCH_SIZE_MAX"])


def test_redis_flushall_mid_load_publishes_every_committed_outcome(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str], tmp_path: Path,
        torture_report) -> None:
    row = torture_report("redis FLUSHALL mid-load (writer, confirmer, gateway)")
    writer, confirmer = start_pipeline(procs)
    port, ops_port = free_port(), free_port()
    procs.start("gateway", *gateway_args(port, ops_port))
    gateway = Pipeline(procs, port, ops_port)
    wait_for(lambda: _connects(gateway), 60, "the gateway")
    subscriber = Collector(gateway.ws(gateway.token(HOT_USER), since=0))
    bets = scaled(2_000, 20_000)
    loads, journals = start_loads(procs, tmp_path, bets, scaled(800, 2_000))
    wait_for(lambda: journal_lines(journals) >= bets, 120, "the load to be half way")
    writer.send_signal(signal.SIGSTOP)  # so that acknowledged entries wait unread
    try:
        waiting = journal_lines(journals)
        # (the admission child may read one batch ahead meanwhile: at most a batch more)
        wait_for(lambda: journal_lines(journals) >= waiting + BATCH_SIZE_MAX + UNREAD_MIN, 30,
                 "entries to wait for the writer")
        flushed_ms = time.time_ns() // 1_000_000
        redis_client.flushall()
    finally:
        writer.send_signal(signal.SIGCONT)
    assert [p.wait(240) for p in loads] == [0, 0], "both producers rode out the flush"

    wait_drained(redis_client)
    db = env["BETSTREAM_DB"]
    committed = {i for (i,) in query(db, "SELECT id FROM outcomes")}
    wait_for(lambda: committed <= {m["id"] for m in confirmations(redis_client)}, DRAIN_S,
             "every committed outcome to be on the confirmations stream")
    hot = {s for (s,) in query(db, "SELECT seq FROM outcomes WHERE user_id = ?", (HOT_USER,))}
    wait_for(lambda: hot <= {m["seq"] for m in subscriber.messages if "seq" in m}, 60,
             "the subscriber to see every outcome of its user")
    subscriber.close()

    code, report = reconcile(procs, journals)
    acked = {a.intent_id: a for j in journals for a in read_journal(j)[0]}
    expected_lost = set(acked) - committed
    assert set(report["lost_ids"]) == expected_lost, "lost: exactly the acked, uncommitted"
    assert not set(report["lost_ids"]) & committed and report["doubled"] == 0
    assert all(int(acked[i].entry_id.split("-")[0]) <= flushed_ms for i in expected_lost), (
        "nothing acknowledged after the flush is lost")
    assert code == 1 and len(expected_lost) >= UNREAD_MIN, report
    assert log_events(writer.log_path, "redis.data_lost"), "the writer reported the loss"
    assert writer.poll() is None and confirmer.poll() is None
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    row.intents = report["intents"]
    row.faults = (f"1 FLUSHALL under load ({len(expected_lost)} acknowledged, not yet "
                  "committed: gone with Redis, listed by reconcile)")
    row.lost, row.doubled, row.audit = 0, report["doubled"], "pass"  # of what was committed
    row.extra.update(acked_but_uncommitted=len(expected_lost), committed=len(committed))


def _connects(gateway: Pipeline) -> bool:
    import httpx

    try:
        return httpx.get(f"{gateway.ops}/health", timeout=2).json()["gateway"]["upstream"]
    except (httpx.HTTPError, KeyError, ValueError):
        return False
