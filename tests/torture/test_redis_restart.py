"""Redis itself crashes (SIGKILL) or stays away, under load, with AOF on.

What a producer can know is what Redis told it: each producer journals its acknowledged
XADDs, and ``betstream reconcile`` compares the journals with the ledger's outcomes.

- ``appendfsync always``: an acknowledged XADD is on disk before the reply, so nothing
  acknowledged may be lost, nothing doubled, every intent id has one outcome.
- ``appendfsync everysec``: Redis may lose what it acknowledged in the last second before
  the crash; reconcile must report exactly those, with ingress times inside that window,
  and re-sending them (same id and nonce) gives a ``duplicate`` or one fresh effect: the
  ledger dedupes by intent id, even though the nonce records were rolled back too.
- Redis away for 30 s (8 s short): writer, confirmer and producers stay alive and retry
  with bounded backoff, the breaker records the outage when Redis is back, and then
  everything drains and audits clean.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from producer import constants as c
from producer.breaker_state import BreakerLimits
from producer.client import Producer
from producer.journal import Journal, JournaledProducer, read_journal
from producer.load import LoadPlan, run_load
from producer.signing import Keyring
from tests.conftest import Procs, RedisServer, private_redis_server, wait_for
from tests.support import confirmations, query
from tests.torture.report import scaled
from workers.adapters.breaker_store import BreakerStore
from workers.adapters.writer_health import writer_health

RETRY_BACKOFF_MIN_MS, RETRY_BACKOFF_MAX_MS = 50, 1000
WRITER_ENV = {"BETSTREAM_LEASE_MS": "2000", "BETSTREAM_BATCH_SIZE_MAX": "200",
              "BETSTREAM_RETRY_BACKOFF_MIN_MS": str(RETRY_BACKOFF_MIN_MS),
              "BETSTREAM_RETRY_BACKOFF_MAX_MS": str(RETRY_BACKOFF_MAX_MS),
              "BETSTREAM_BREAKER_COOLDOWN_S": "1",
              "BETSTREAM_BREAKER_STABILITY_S": str(scaled(3, 30))}
CONFIRMER_ENV = {"BETSTREAM_CONFIRM_LEASE_MS": "1000",
                 "BETSTREAM_RETRY_BACKOFF_MAX_MS": str(RETRY_BACKOFF_MAX_MS)}
EVERYSEC_WINDOW_MS = 2_000  # re-sent after the crash: everything acknowledged this late
COMMIT_IN_SECOND_ATTEMPTS_MAX = 20  # seconds tried for one whose entries commit in time
COMMIT_IN_SECOND_BY_S = 0.6  # into the second: the lock, then the kill at 0.75
DRAIN_S = 180
DEPOSIT = 1_000_000_000  # per user: most bets are accepted, so each has an effect to double


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """These tests kill and restart Redis: each has a server of its own."""
    yield from private_redis_server(tmp_path / "redis")


@pytest.fixture
def aof_redis(redis_server: RedisServer,
              redis_client: redis.Redis) -> Callable[..., None]:
    """Restart this test's redis-server with AOF and the given fsync policy, fresh data."""

    def start(fsync: str, *more: str) -> None:
        redis_server.restart("--appendonly", "yes", "--appendfsync", fsync, *more)
        redis_client.flushall()
        config = {_s(k): _s(v) for k, v in redis_client.config_get("append*").items()}
        # The fixture starts with --appendonly no: the later arguments must win.
        assert (config["appendonly"], config["appendfsync"]) == ("yes", fsync), config

    return start


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def start_pipeline(procs: Procs, **writer_env: str) -> tuple:
    writer = procs.start("writer", **{**WRITER_ENV, **writer_env})
    confirmer = procs.start("confirmer", **CONFIRMER_ENV)
    return writer, confirmer


def start_loads(procs: Procs, tmp_path: Path, bets: int, rate: int) -> tuple[list, list[Path]]:
    journals = [tmp_path / f"producer{i}.journal" for i in (1, 2)]
    loads = [procs.start("load", "--users", "20", "--user-first", str(1 + 100 * i),
                         "--bets", str(bets), "--rate", str(rate), "--duplicates", "0.02",
                         "--withdrawals", "0.05", "--deposit", str(DEPOSIT),
                         "--seed", str(i), "--journal", str(j),
                         "--redis-wait", "120", "--json", "--quiet", name=f"load{i}")
             for i, j in enumerate(journals, start=1)]
    return loads, journals


def journal_lines(journals: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in journals if p.exists())


def reconcile(procs: Procs, journals: list[Path]) -> tuple[int, dict]:
    args = [a for j in journals for a in ("--journal", str(j))]
    run = procs.run("reconcile", *args, "--json", "--wait", "60")
    assert run.returncode in (0, 1), run.stdout + run.stderr
    return run.returncode, json.loads(run.stdout)


def one_outcome_per_id(db: str) -> dict[str, int]:
    return dict(query(db, "SELECT id, COUNT(*) FROM outcomes WHERE reason IS NULL "
                          "OR reason != 'id_conflict' GROUP BY id"))


def wait_confirmed(client: redis.Redis, db: str) -> None:
    """Every outcome reached the confirmations stream (jobs abandoned in the crash too)."""
    wanted = set(one_outcome_per_id(db))
    wait_for(lambda: wanted <= {m["id"] for m in confirmations(client)}, DRAIN_S,
             "every outcome to be confirmed")


def drained_exactly(client: redis.Redis) -> bool:
    """Nothing pending and nothing after the group's last-delivered id. (XINFO's ``lag`` is
    unknown for a while after Redis reloads its AOF, and ``tests.support.drained`` reads
    unknown as 0.)"""
    group = next((g for g in client.xinfo_groups(c.STREAM_INTENTS)
                  if _s(g["name"]) == c.GROUP_WRITERS), None)
    if group is None or int(group["pending"]):
        return False
    return not client.xrange(c.STREAM_INTENTS, min=f"({_s(group['last-delivered-id'])}",
                             count=1)


def wait_drained(client: redis.Redis) -> None:
    try:
        wait_for(lambda: drained_exactly(client), DRAIN_S, "the writer to drain the stream")
    except AssertionError as exc:
        groups = client.xinfo_groups(c.STREAM_INTENTS)
        pending = client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)
        raise AssertionError(f"{exc}: groups={groups} pending={pending} "
                             f"stream={client.xinfo_stream(c.STREAM_INTENTS)}") from None


def finish_and_check(procs: Procs, client: redis.Redis, env: dict[str, str],
                     journals: list[Path], processes: list) -> tuple[int, dict]:
    wait_drained(client)
    db = env["BETSTREAM_DB"]
    code, report = reconcile(procs, journals)
    counts = one_outcome_per_id(db)
    assert set(counts.values()) <= {1}, "every intent id has exactly one outcome"
    wait_confirmed(client, db)
    assert all(p.poll() is None for p in processes), "writer and confirmer are still alive"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    return code, report


def test_redis_sigkilled_with_appendfsync_always_loses_nothing(
        procs: Procs, redis_server: RedisServer, redis_client: redis.Redis,
        aof_redis: Callable[..., None], env: dict[str, str], tmp_path: Path,
        torture_report) -> None:
    row = torture_report("redis SIGKILL under load (AOF always)")
    aof_redis("always")
    pipeline = start_pipeline(procs)
    bets, kills = scaled(3_000, 40_000), scaled(2, 5)
    loads, journals = start_loads(procs, tmp_path, bets, scaled(1_500, 3_000))
    total = 2 * (20 + bets)
    rng = random.Random()
    for k in range(1, kills + 1):
        wait_for(lambda: journal_lines(journals) >= total * k / (kills + 1), 120,
                 f"the load to reach kill point {k}")
        redis_server.kill()
        time.sleep(rng.uniform(0.1, 1.0))  # Redis is down for a random moment, not a wait
        redis_server.start()
    assert [p.wait(240) for p in loads] == [0, 0], "both producers rode out the restarts"
    code, report = finish_and_check(procs, redis_client, env, journals, list(pipeline))
    row.intents, row.faults = report["intents"], f"redis SIGKILL ×{kills} (appendfsync always)"
    row.lost, row.doubled, row.audit = report["lost"], report["doubled"], "pass"
    row.extra["acknowledged_xadds"] = report["acknowledgements"]
    row.extra["producer_chunks_resent"] = sum(
        json.loads(Path(p.log_path).read_text().strip().splitlines()[-1])["redis_retries"]
        for p in loads)
    assert code == 0 and report["lost"] == 0 and report["doubled"] == 0, report
    assert report["intents"] >= total, "every planned intent was acknowledged"


def power_cut(server: RedisServer, kill_ms: int) -> None:
    """What a machine crash does to an everysec AOF: the tail not yet fsynced is gone.

    A SIGKILL of redis-server alone loses nothing it acknowledged (it write()s the AOF
    before replying; the kernel keeps the data). everysec fsyncs once a second, so a power
    cut loses up to the last second: simulated by cutting the AOF back to the end of the
    second before the kill (``aof-timestamp-enabled`` annotates each second).
    """
    manifest = server.dir / "appendonlydir" / "appendonly.aof.manifest"
    cut = subprocess.run(["redis-check-aof", "--truncate-to-timestamp",
                          str(kill_ms // 1000 - 1), str(manifest)],
                         capture_output=True, text=True, timeout=60)
    assert cut.returncode == 0 and "truncated" in cut.stdout.lower(), cut.stdout + cut.stderr


class KeepingProducer(JournaledProducer):
    """Journals like ``betstream load --journal`` and keeps each signed entry by intent id,
    as a producer that may have to re-send must."""

    def __init__(self, producer: Producer, journal: Journal) -> None:
        super().__init__(producer, journal)
        self.sent: dict[str, dict] = {}

    def submit_fields(self, entries):
        entries = list(entries)
        ids = super().submit_fields(entries)
        for fields in entries:
            self.sent[json.loads(fields[c.FIELD_BODY])["id"]] = fields
        return ids


def test_redis_sigkilled_with_appendfsync_everysec_loses_only_the_last_second(
        procs: Procs, redis_server: RedisServer, redis_client: redis.Redis,
        aof_redis: Callable[..., None], env: dict[str, str], keyring: Keyring,
        tmp_path: Path, torture_report) -> None:
    row = torture_report("redis SIGKILL under load (AOF everysec)")
    aof_redis("everysec", "--aof-timestamp-enabled", "yes")
    pipeline = start_pipeline(procs)
    bets = scaled(2_000, 30_000)
    producers, threads, results = [], [], []
    for i in (1, 2):
        client = redis.Redis.from_url(redis_server.url)
        kept = KeepingProducer(Producer(client, keyring), Journal(tmp_path / f"p{i}.journal"))
        plan = LoadPlan(users=20, user_first=1 + 100 * i, bets=bets, rate=scaled(500, 1_500),
                        deposit=DEPOSIT, withdrawal_share=0.05, seed=i)
        producers.append(kept)
        threads.append(threading.Thread(
            target=lambda k=kept, p=plan: results.append(run_load(k, p, redis_wait_s=120))))
    for t in threads:
        t.start()
    journals = [p.journal.path for p in producers]
    wait_for(lambda: journal_lines(journals) >= bets, 120, "the load to be half way")
    # The last second before the crash holds both kinds of victims: entries the writer
    # committed before its ledger got locked (e.g. by a backup) at mid-second, and
    # acknowledged entries it could not read after that. The power cut drops the second.
    second = _second_with_a_commit(env["BETSTREAM_DB"])
    lock = sqlite3.connect(env["BETSTREAM_DB"], isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    wait_for(lambda: time.time() >= second + 0.75, 2, "late in the same second")
    kill_ms = time.time_ns() // 1_000_000
    assert kill_ms // 1000 == second, f"the kill slipped into the next second: {kill_ms}"
    redis_server.kill()
    power_cut(redis_server, kill_ms)
    redis_server.start()
    lock.rollback()
    lock.close()
    for t in threads:
        t.join(240)
    for p in producers:
        p.journal.close()
    assert len(results) == 2, "both producers rode out the restart"
    assert all(r.sent == 20 + bets for r in results), results

    wait_drained(redis_client)
    code, first = reconcile(procs, journals)
    lost_before = first["lost"]
    assert code == 1 and lost_before > 0, f"reconcile reports what the power cut lost: {first}"
    low, high = first["lost_entry_ms"]
    assert (kill_ms // 1000) * 1000 <= low <= high <= kill_ms, (
        f"lost acknowledgements {low}..{high} lie within the last second before the kill "
        f"at {kill_ms}")

    # Re-send everything acknowledged in the window before the kill: lost ones and ones
    # the writer committed although Redis then lost their entries (and nonce records).
    db = env["BETSTREAM_DB"]
    before = dict(query(db, "SELECT id, seq FROM outcomes"))
    acks = [a for j in journals for a in read_journal(j)[0]]
    window = {a.intent_id for a in acks
              if kill_ms - EVERYSEC_WINDOW_MS <= int(a.entry_id.split("-")[0]) <= kill_ms}
    stream_ids = {e.decode() for e, _ in redis_client.xrange(c.STREAM_INTENTS)}
    rolled_back = {a.intent_id for a in acks if a.entry_id not in stream_ids
                   and a.intent_id in window}
    kept = {k: v for p in producers for k, v in p.sent.items()}
    resender = KeepingProducer(Producer(redis_client, keyring, shed=False),
                               Journal(tmp_path / "resend.journal"))
    resender.submit_fields([kept[i] for i in sorted(window)])
    resender.journal.close()
    wait_drained(redis_client)
    counts = one_outcome_per_id(db)
    assert all(counts.get(i) == 1 for i in window), "each re-sent intent has one outcome"
    after = dict(query(db, "SELECT id, seq FROM outcomes"))
    already = {i for i in window if i in before}
    assert all(after[i] == before[i] for i in already), "a decided intent kept its outcome"
    wait_confirmed(redis_client, db)
    duplicates = {m["id"] for m in confirmations(redis_client) if m.get("duplicate")}
    assert already <= duplicates, "re-sending a decided intent answers it as a duplicate"
    assert rolled_back & already, (
        f"some entries Redis lost had been committed ({len(rolled_back)} rolled back, "
        f"{len(already)} decided before): their re-send must be a duplicate")

    code, final = reconcile(procs, [*journals, tmp_path / "resend.journal"])
    assert code == 0 and final["lost"] == 0 and final["doubled"] == 0, final
    assert all(p.poll() is None for p in pipeline), "writer and confirmer are still alive"
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    row.intents = first["intents"]
    row.faults = "redis SIGKILL ×1 + power cut (AOF tail of the last second dropped, everysec)"
    row.lost, row.doubled, row.audit = lost_before, final["doubled"], "pass"
    row.extra.update(lost_entry_ms=first["lost_entry_ms"], kill_ms=kill_ms,
                     resent=len(window), resent_answered_duplicate=len(already),
                     entries_rolled_back=len(rolled_back),
                     rolled_back_but_committed=len(rolled_back & already))


def _second_with_a_commit(db: str) -> int:
    """A second in whose first part the writer has committed some of the entries that
    arrived in it: on a busy machine the writer lags, and a lock taken at a fixed moment
    could find nothing of that second committed (the scenario's premise)."""
    for _ in range(COMMIT_IN_SECOND_ATTEMPTS_MAX):
        wait_for(lambda: time.time() % 1 < 0.1, 2, "the start of a second")
        second = int(time.time())
        first_entry = f"{second * 1000}-0"  # entry ids of this epoch have 13-digit ms

        def committed() -> bool:
            try:
                return query(db, "SELECT COUNT(*) FROM outcomes WHERE entry_id >= ?",
                             (first_entry,))[0][0] > 0
            except sqlite3.OperationalError:
                return False  # the writer has not created the ledger yet (a slow start)

        wait_for(lambda: committed() or time.time() >= second + COMMIT_IN_SECOND_BY_S,
                 2, "a commit of this second's entries")
        if committed() and time.time() < second + COMMIT_IN_SECOND_BY_S:
            return second
    raise AssertionError(f"no second in {COMMIT_IN_SECOND_ATTEMPTS_MAX} saw a commit of its "
                         "own entries in time")


def log_events(path: str, event: str) -> list[dict]:
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out


def test_redis_away_for_a_while_everything_survives_and_drains(
        procs: Procs, redis_server: RedisServer, redis_client: redis.Redis,
        aof_redis: Callable[..., None], env: dict[str, str], tmp_path: Path,
        torture_report) -> None:
    outage_s = scaled(8, 30)
    row = torture_report(f"redis away {outage_s} s under load (AOF always)")
    aof_redis("always")
    # A half-open window long enough for an operator's `betstream health` to catch it.
    writer, confirmer = start_pipeline(procs, BETSTREAM_BREAKER_STABILITY_S=str(scaled(8, 30)))
    bets = scaled(2_000, 20_000)
    loads, journals = start_loads(procs, tmp_path, bets, scaled(500, 1_000))
    wait_for(lambda: journal_lines(journals) >= bets // 2, 120, "the load to be under way")
    redis_server.kill()
    down_until = time.monotonic() + outage_s
    while time.monotonic() < down_until:  # the outage itself (the point of the test)
        assert writer.poll() is None and confirmer.poll() is None, "no process gave up"
        assert all(p.poll() is None for p in loads), "producers wait for Redis"
        time.sleep(0.5)
    redis_server.start()

    wait_for(lambda: writer_health(redis_client).degraded, 30,
             "the writer to report the outage through the breaker")
    health = procs.run("health")
    assert health.returncode == 1 and "UNHEALTHY: breaker" in health.stdout, health.stdout
    wait_for(lambda: procs.run("health").returncode == 0, 120,
             "betstream health to report healthy again (writer leading, breaker closed)")
    assert [p.wait(240) for p in loads] == [0, 0], "both producers finished"
    code, report = finish_and_check(procs, redis_client, env, journals, [writer, confirmer])
    assert code == 0 and report["lost"] == 0 and report["doubled"] == 0, report

    log = BreakerStore(redis_client, BreakerLimits()).transitions(100)[::-1]
    opened = [t for t in log if t["state"] == "open"]
    assert opened and "redis unreachable" in opened[0]["reason"], log
    assert log[-1]["state"] == "closed"
    retries = log_events(writer.log_path, "writer.retry")
    assert retries, "the writer logged its retries"
    assert max(int(r["delay_ms"]) for r in retries) <= RETRY_BACKOFF_MAX_MS
    assert len(retries) <= outage_s * 1000 / RETRY_BACKOFF_MIN_MS, "a backoff, not a hot loop"
    restarts = log_events(confirmer.log_path, "confirmer.retry")
    assert restarts, "the confirmer logged its retries"
    assert all(int(r["delay_ms"]) <= RETRY_BACKOFF_MAX_MS for r in restarts)
    load_summaries = [json.loads(Path(p.log_path).read_text().strip().splitlines()[-1])
                      for p in loads]
    assert all(s["redis_retries"] > 0 for s in load_summaries), load_summaries
    row.intents, row.faults = report["intents"], f"redis down {outage_s} s (SIGKILL, restart)"
    row.lost, row.doubled, row.audit = report["lost"], report["doubled"], "pass"
    row.extra.update(writer_retries=len(retries), confirmer_retries=len(restarts),
                     breaker=[t["state"] for t in log])
