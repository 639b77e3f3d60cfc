"""Confirmations reach the right subscriber, once, through real processes."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis
from websockets.exceptions import InvalidStatus

from producer.client import Producer
from producer.contract import new_bet, new_deposit
from tests.conftest import Procs, wait_for
from tests.e2e.gateway_support import Collector, receive, start_pipeline
from tests.support import drained, query
from workers.adapters import subscriber_tokens as tokens


def test_each_subscriber_gets_its_own_confirmations_once(
        procs: Procs, producer: Producer) -> None:
    pipe = start_pipeline(procs)
    alice, bob = pipe.ws(pipe.token(21)), pipe.ws(pipe.token(22))
    deposit, bet = new_deposit(21, 1_000), new_bet(21, 400, "final", "home", "2.00")
    producer.submit_many([deposit, bet])
    got = receive(alice, 2)
    assert [m["id"] for m in got] == [deposit.id, bet.id]
    assert got[1]["status"] == "accepted" and got[1]["balance"] == 600

    marker = new_deposit(22, 5)  # bob's own intent, sent after alice's were confirmed
    producer.submit(marker)
    assert [m["id"] for m in receive(bob, 1)] == [marker.id], "bob saw nothing of alice's"
    with pytest.raises(TimeoutError):
        alice.recv(timeout=0.5)  # and alice got no third message (nor bob's)

    def metric(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    def metrics_flushed() -> str | None:
        text = httpx.get(f"{pipe.ops}/metrics").text
        names = ("betstream_ingress_to_confirm_ms_count", "betstream_intents_accepted_total",
                 "betstream_ingress_to_commit_ms_count")
        return text if all(metric(text, n) >= 3 for n in names) else None

    # the writer flushes its counters every second, the confirmer with each round
    text = wait_for(metrics_flushed, 20, "the counts and latency histograms to be exported")
    assert 'betstream_breaker_state{state="closed"} 1.0' in text
    assert "betstream_stream_lag" in text and "betstream_confirmer_published_seq" in text
    health = httpx.get(f"{pipe.ops}/health").json()
    assert health["ok"] and health["breaker"]["state"] == "closed"
    confirmer = health["confirmer"]
    assert confirmer["ok"] and confirmer["published_seq"] == confirmer["committed_seq"] > 0

    bet_view = httpx.get(f"{pipe.http}/bets/{bet.id}",
                         headers={"authorization": f"Bearer {pipe.token(21)}"}).json()
    assert bet_view["stake"] == 400 and bet_view["status"] == "accepted"
    assert bet_view["odds"] == "2.00" and bet_view["balance"] == 600


def test_wrong_tokens_are_refused(procs: Procs, producer: Producer, env: dict[str, str]) -> None:
    pipe = start_pipeline(procs)
    secret = tokens.load_or_create_secret(env["BETSTREAM_GATEWAY_SECRET_FILE"])
    expired = tokens.issue(secret, 31, ttl_s=1, now_ms=int(time.time() * 1000) - 10_000)
    forged = tokens.issue(b"not-the-gateway-secret-0123456789abcdef", 31, ttl_s=60)
    good = pipe.token(31)
    tampered = good[:-1] + ("1" if good[-1] == "0" else "0")  # one hex digit changed
    for bad in ("", "garbage", expired, forged, tampered):
        with pytest.raises(InvalidStatus):
            pipe.ws(bad)
    bet = new_bet(31, 1, "m", "s", "2.00")
    producer.submit_many([new_deposit(31, 10), bet])
    wait_for(lambda: httpx.get(f"{pipe.http}/bets/{bet.id}?token={pipe.token(31)}")
             .status_code == 200, 20, "the bet to be committed")
    other = httpx.get(f"{pipe.http}/bets/{bet.id}?token={pipe.token(32)}")
    assert other.status_code == 404, "another user's token does not see the bet"
    assert httpx.get(f"{pipe.http}/bets/{bet.id}").status_code == 401


def test_confirmer_sigkilled_mid_load_every_outcome_confirmed_once(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str]) -> None:
    fast_recovery = {"BETSTREAM_CONFIRM_LEASE_MS": "1000",
                     # the hot user gets hundreds of outcomes: keep them all replayable
                     "BETSTREAM_USER_CONFIRMATIONS_LEN_MAX": "5000"}
    pipe = start_pipeline(procs, **fast_recovery)
    hot = 1  # the load generator sends a share of bets to users 1..10
    token = pipe.token(hot)
    subscriber = Collector(pipe.ws(token, since=0))
    load = procs.start("load", "--users", "20", "--bets", "6000", "--rate", "2000", "--quiet",
                       "--seed", "7")
    seen: list[int] = []
    confirmer = next(p for p in procs.started if p.args[-1] == "confirmer")
    for _ in range(2):
        time.sleep(random.uniform(0.3, 1.0))  # a random moment to crash at, not a wait
        confirmer.send_signal(signal.SIGKILL)
        confirmer.wait(10)
        seen += [m["seq"] for m in subscriber.close()]  # the subscriber drops off too
        confirmer = procs.start("confirmer", **fast_recovery)
        subscriber = Collector(pipe.ws(token, since=max(seen, default=0)))
    assert load.wait(60) == 0
    wait_for(lambda: drained(redis_client), 60, "the writer to commit everything")
    db = env["BETSTREAM_DB"]
    all_seqs = {s for (s,) in query(db, "SELECT seq FROM outcomes")}
    try:
        wait_for(lambda: published_seqs(redis_client) >= all_seqs, 90,
                 "every committed outcome to be confirmed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {confirmer_state(redis_client, all_seqs, procs)}") from None
    hot_seqs = {s for (s,) in query(db, "SELECT seq FROM outcomes WHERE user_id = ?", (hot,))}
    wait_for(lambda: set(seen + [m["seq"] for m in subscriber.messages]) >= hot_seqs, 60,
             "the reconnected subscriber to catch up")
    seen += [m["seq"] for m in subscriber.close()]
    assert set(seen) == hot_seqs, "the reconnecting subscriber saw every seq of its user"
    assert len(seen) == len(set(seen)), "and each once"


def published_seqs(client: redis.Redis) -> set[int]:
    import json

    return {json.loads(f[b"outcome"])["seq"] for _, f in client.xrange("betstream:confirmations")}


def confirmer_state(client: redis.Redis, wanted: set[int], procs: Procs) -> str:
    """What a failure needs to be understood."""
    missing = sorted(wanted - published_seqs(client))
    record = client.hgetall("betstream:confirmer:progress")
    logs = [Path(p.log_path).read_text()[-1500:] for p in procs.started  # type: ignore[attr-defined]
            if "confirmer" in p.args]
    return (f"{len(missing)} seqs unpublished (e.g. {missing[:5]}); confirmer record {record}; "
            f"confirmer logs: {logs}")
