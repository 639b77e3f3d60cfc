"""Two-phase withdrawals (contract v1.1) through the real stream, writer and ledger: a hold
reserves, a post pays out, a void gives back, a hold past its time is voided by the writer
itself, across a writer restart, exactly once, and the audit holds."""

from __future__ import annotations

import signal
import time

import redis

from producer.client import Producer
from producer.contract import (
    new_deposit,
    new_withdrawal_hold,
    new_withdrawal_post,
    new_withdrawal_void,
    now_ms,
)
from tests.conftest import Procs, wait_for
from tests.support import balances, drained, outcome_of, query

PENDING = -3
TIMEOUT_S = 2


def _statuses(db: str, intents: list) -> list[tuple[str, str | None]]:
    return [(o["status"], o["reason"]) for o in (outcome_of(db, i.id) for i in intents)]


def test_a_hold_reserves_a_post_pays_out_and_a_void_gives_back(
        procs: Procs, redis_client: redis.Redis, producer: Producer, env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    procs.start("writer")
    producer.submit_many([new_deposit(41, 1_000), new_deposit(42, 1_000)])
    paid, refused = new_withdrawal_hold(41, 300), new_withdrawal_hold(41, 200)
    too_much = new_withdrawal_hold(41, 600)
    producer.submit_many([paid, refused, too_much])
    wait_for(lambda: drained(redis_client), 30, "the holds")
    assert balances(db)[41] == 500 and balances(db)[PENDING] == 500
    assert _statuses(db, [too_much]) == [("rejected", "insufficient_funds")]

    post, void = new_withdrawal_post(41, paid.id), new_withdrawal_void(41, refused.id)
    again = new_withdrawal_void(41, paid.id)  # posted already
    stranger = new_withdrawal_post(42, refused.id)  # not 42's hold
    made_up = new_withdrawal_post(41, new_deposit(1, 1).id)  # no such hold
    producer.submit_many([post, void, again, stranger, made_up])
    wait_for(lambda: drained(redis_client), 30, "the posts and voids")
    assert _statuses(db, [post, void, again, stranger, made_up]) == [
        ("accepted", None), ("accepted", None), ("rejected", "hold_closed"),
        ("rejected", "unknown_hold"), ("rejected", "unknown_hold")]
    assert balances(db)[41] == 700 and balances(db)[PENDING] == 0 and balances(db)[0] == -1_700
    assert dict(query(db, "SELECT id, state FROM holds")) == {paid.id: "posted",
                                                              refused.id: "voided"}
    assert procs.run("audit").returncode == 0


def test_a_hold_past_its_time_is_voided_once_across_a_writer_restart(
        procs: Procs, redis_client: redis.Redis, producer: Producer, env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    writer = procs.start("writer")
    producer.submit(new_deposit(43, 1_000))
    hold = new_withdrawal_hold(43, 400, timeout_s=TIMEOUT_S)
    producer.submit(hold)
    wait_for(lambda: drained(redis_client), 30, "the hold")
    writer.send_signal(signal.SIGKILL)  # the writer that took the hold dies before it is due
    writer.wait(10)
    time.sleep(TIMEOUT_S)  # the hold falls due while no writer runs (the scenario, not a wait)
    late_post = new_withdrawal_post(43, hold.id)
    producer.submit(late_post)
    procs.start("writer")
    wait_for(lambda: query(db, "SELECT state FROM holds WHERE id = ?", (hold.id,))
             == [("expired",)], 30, "the new writer to void the hold for its time")
    wait_for(lambda: drained(redis_client), 30, "the late post")
    assert _statuses(db, [late_post]) == [("rejected", "hold_closed")]
    expiries = query(db, "SELECT kind, user_id, status, detail, balance FROM outcomes "
                         "WHERE entry_id LIKE 'writer:expire:%'")
    assert expiries == [("withdrawal_void", 43, "accepted", "expired", 1_000)], "once"
    assert balances(db)[43] == 1_000 and balances(db)[PENDING] == 0
    assert procs.run("audit").returncode == 0


def test_a_statement_shows_the_players_holds_and_their_state(
        procs: Procs, redis_client: redis.Redis, producer: Producer) -> None:
    procs.start("writer")
    held, posted = new_withdrawal_hold(44, 100, timeout_s=600), new_withdrawal_hold(44, 50)
    producer.submit_many([new_deposit(44, 1_000), held, posted,
                          new_withdrawal_post(44, posted.id)])
    wait_for(lambda: drained(redis_client), 30, "the holds")
    shown = procs.run("statement", "44")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"withdrawal hold {held.id}" in shown.stdout and " open due " in shown.stdout
    assert f"withdrawal hold {posted.id}" in shown.stdout and "posted" in shown.stdout
    assert "closing balance 850" in shown.stdout


# --- expiry by stream time, through the writer's own pipeline and a real ledger ------------


def _pipeline(settings, tmp_path, clock):  # type: ignore[no-untyped-def]
    from workers.adapters.ledger_store import Store
    from workers.writer.batch_pipeline import BatchPipeline

    store = Store(tmp_path / "pipeline.sqlite3", 5_000, checkpoint_interval_ms=0)
    store.bump_epoch()
    return store, BatchPipeline(settings, store, stream_clock=lambda: clock[0])


def _run(store, pipeline, intents_at: list[tuple], now: int):  # type: ignore[no-untyped-def]
    """One batch of ``(intent, ingress ms)`` decided at the writer's ``now`` and committed."""
    import hashlib

    from producer.contract import intent_body
    from workers.core.decision import Candidate
    from workers.writer.batch_source import Batch

    cands = [Candidate.of(f"{at}-{n}", at, intent, hashlib.sha256(intent_body(intent)).digest(),
                          "payments") for n, (intent, at) in enumerate(intents_at)]
    batch = Batch([(c.entry_id, {}) for c in cands], cands, [])
    decided = pipeline.decide(batch, {c.entry_id: c.id for c in cands}, now,
                              store._meta("epoch"))
    pipeline.commit(decided)
    return decided.write.outcomes if decided.write else []


def test_a_post_that_reached_the_stream_in_time_is_taken_though_the_writer_was_behind(
        settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Due by stream time, not by the writer's clock: a writer 5 s behind its stream does
    not void a hold before deciding the post that reached the stream in time."""
    t = now_ms()  # the intents are issued now: their ingress must be near it (freshness)
    clock = [t + 5_000]
    store, pipeline = _pipeline(settings, tmp_path, clock)
    hold = new_withdrawal_hold(45, 100, timeout_s=1)
    _run(store, pipeline, [(new_deposit(45, 1_000), t), (hold, t)], now=t)
    # the next entries read: one from before the hold's time, decided 5 s late
    assert _run(store, pipeline, [(new_deposit(46, 1), t + 400)], now=t + 5_000)[-1].kind \
        == "deposit", "not due at the last entry read: nothing expires"
    post = new_withdrawal_post(45, hold.id)
    outcomes = _run(store, pipeline, [(post, t + 500)], now=t + 5_001)
    assert [(o.id, o.status) for o in outcomes] == [(post.id, "accepted")]
    assert store._conn.execute("SELECT state FROM holds").fetchall() == [("posted",)]


def test_a_hold_the_same_batch_posts_is_not_also_expired(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A due hold whose post is in the batch: the post is decided, no void of the writer's
    own follows it (it would be refused, an outcome the player never asked for)."""
    t = now_ms()  # the intents are issued now: their ingress must be near it (freshness)
    clock = [t]
    store, pipeline = _pipeline(settings, tmp_path, clock)
    hold = new_withdrawal_hold(47, 100, timeout_s=1)
    _run(store, pipeline, [(new_deposit(47, 1_000), t), (hold, t)], now=t)
    post = new_withdrawal_post(47, hold.id)
    outcomes = _run(store, pipeline, [(post, t + 900), (new_deposit(48, 1), t + 3_000)],
                    now=t + 3_000)
    assert [(o.kind, o.status) for o in outcomes] == [("withdrawal_post", "accepted"),
                                                      ("deposit", "accepted")]
    clock[0] = t + 10_000
    assert not pipeline.has_chores(), "nothing left to expire"
