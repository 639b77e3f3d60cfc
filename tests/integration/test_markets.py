"""Market suspension (contract v1.1) through the real stream, writer and ledger: bets on a
suspended market are rejected ``market_suspended`` from the intent that suspends it on,
the suspension survives a writer restart, and a trading desk drives it from the CLI."""

from __future__ import annotations

import json
import signal

import pytest
import redis

from producer import constants as c
from producer.client import Producer, entry_fields
from producer.contract import (
    intent_body,
    new_bet,
    new_deposit,
    new_resume_market,
    new_settle,
    new_settle_market,
    new_suspend_market,
)
from producer.errors import ForbiddenKind
from producer.signing import Keyring
from tests.conftest import Procs, wait_for
from tests.support import balances, drained, outcome_of, query


def _statuses(db: str, intents: list) -> list[tuple[str, str | None]]:
    return [(o["status"], o["reason"]) for o in (outcome_of(db, i.id) for i in intents)]


def test_bets_after_a_suspension_are_refused_until_it_is_lifted(
        procs: Procs, redis_client: redis.Redis, producer: Producer, env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    writer = procs.start("writer")
    producer.submit(new_deposit(61, 10_000))
    before = new_bet(61, 100, "derby", "home", "2.00")
    suspend = new_suspend_market("derby")
    after = [new_bet(61, 100, "derby", "away", "3.00"), new_bet(61, 100, "cup", "home", "2.00")]
    producer.submit_many([before, suspend, *after])  # one XADD pipeline: likely one batch
    wait_for(lambda: drained(redis_client), 30, "the writer to take them")
    assert _statuses(db, [before, suspend, *after]) == [
        ("accepted", None), ("accepted", None), ("rejected", "market_suspended"),
        ("accepted", None)], "only bets on the suspended market, only from the suspension on"
    assert query(db, "SELECT user_id, balance FROM outcomes WHERE id = ?", (suspend.id,)) \
        == [(0, None)], "a market's outcome: no player, no balance"

    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    procs.start("writer")  # the suspension is in the ledger, not in the dead writer
    late = new_bet(61, 100, "derby", "draw", "3.20")
    resume = new_resume_market("derby")
    again = new_bet(61, 100, "derby", "draw", "3.20")
    producer.submit(late)
    wait_for(lambda: drained(redis_client), 30, "the new writer to take the bet")
    producer.submit_many([resume, again])
    wait_for(lambda: drained(redis_client), 30, "the new writer to take the resumption")
    assert _statuses(db, [late, resume, again]) == [
        ("rejected", "market_suspended"), ("accepted", None), ("accepted", None)]


def test_the_trading_desk_suspends_and_resumes_from_the_cli(
        procs: Procs, redis_client: redis.Redis, producer: Producer) -> None:
    procs.start("writer")
    producer.submit_many([new_deposit(62, 1_000), new_bet(62, 250, "final", "home", "2.50")])
    wait_for(lambda: drained(redis_client), 30, "the writer to take the bet")
    status = procs.run("market", "status", "final", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) | {"since_seq": None} == {
        "market": "final", "state": "open", "since_seq": None, "open_bets": 1,
        "open_stakes": 250}

    suspended = procs.run("market", "suspend", "final", "--kid", "trading")
    assert suspended.returncode == 0, suspended.stdout + suspended.stderr
    assert "suspend_market 'final': accepted" in suspended.stdout
    shown = procs.run("market", "status", "final")
    assert "market 'final': suspended since outcome seq" in shown.stdout
    assert "1 open bets, stakes 250" in shown.stdout
    refused = new_bet(62, 10, "final", "home", "2.50")
    producer.submit(refused)
    wait_for(lambda: drained(redis_client), 30, "the writer to take the bet")
    assert procs.run("market", "resume", "final").returncode == 0
    assert "market 'final': open" in procs.run("market", "status", "final").stdout


def test_only_a_key_allowed_market_kinds_can_suspend_a_market(
        procs: Procs, redis_client: redis.Redis, keyring: Keyring, env: dict[str, str]) -> None:
    procs.start("writer")
    front_end = Producer(redis_client, keyring, kids={"suspend_market": "frontend"})
    with pytest.raises(ForbiddenKind):
        front_end.submit(new_suspend_market("final"))  # the library refuses to sign it
    forged = new_suspend_market("final")  # signed anyway, by hand, with the front-end key
    redis_client.xadd(c.STREAM_INTENTS, entry_fields(keyring.get("frontend"),
                                                     intent_body(forged)))
    wait_for(lambda: drained(redis_client), 30, "the writer to take it")
    assert _statuses(env["BETSTREAM_DB"], [forged]) == [("rejected", "forbidden_kind")]
    refused = procs.run("market", "suspend", "final", "--kid", "frontend", "--wait", "1")
    assert refused.returncode == 1 and "may not sign" in refused.stderr


def test_a_market_settles_every_open_bet_once_in_chunks_and_then_closes(
        procs: Procs, redis_client: redis.Redis, producer: Producer, env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    procs.start("writer", BETSTREAM_SETTLE_CHUNK_BETS_MAX="7")  # many chunks for 40 bets
    users = list(range(70, 75))
    producer.submit_many([new_deposit(u, 10_000) for u in users])
    picks = ["home", "draw", "away", "home 2nd half"]
    bets = [new_bet(users[i % 5], 100 + i, "final", picks[i % 4], "2.50") for i in range(40)]
    elsewhere = new_bet(70, 100, "semi", "home", "2.50")
    settled_alone = bets[0]
    producer.submit_many([*bets, elsewhere])
    wait_for(lambda: drained(redis_client), 30, "the bets to be placed")
    single = new_settle(settled_alone.user_id, settled_alone.id, "void")
    producer.submit(single)  # settled on its own first: the market leaves it alone
    wait_for(lambda: drained(redis_client), 30, "the single settle")
    before = balances(db)

    settle = new_settle_market("final", {"home": "won", "draw": "void"}, others="lost")
    producer.submit(settle)
    wait_for(lambda: query(db, "SELECT state FROM markets WHERE market = 'final'")
             == [("closed",)], 30, "the market to be settled and closed")
    results = dict(query(db, "SELECT id, status FROM bets WHERE market = 'final'"))
    expected = {b.id: {"home": "won", "draw": "void"}.get(b.selection, "lost") for b in bets}
    expected[settled_alone.id] = "void"
    assert results == expected
    assert query(db, "SELECT status FROM bets WHERE id = ?", (elsewhere.id,)) == [("open",)]
    paid: dict[int, int] = {}
    for bet in bets[1:]:
        pay = {"won": bet.amount * 250 // 100, "void": bet.amount, "lost": 0}[expected[bet.id]]
        paid[bet.user_id] = paid.get(bet.user_id, 0) + pay
    after = balances(db)
    assert {u: after[u] - before[u] for u in users} == {u: paid.get(u, 0) for u in users}
    settles = query(db, "SELECT user_id, status, balance FROM outcomes WHERE kind = 'settle' "
                        "AND entry_id LIKE 'writer:%' ORDER BY seq")
    assert len(settles) == len(bets) - 1 and {s[1] for s in settles} == {"accepted"}

    late = [new_bet(70, 10, "final", "home", "2.50"),
            new_settle_market("final", {"home": "lost"}),
            new_settle(bets[1].user_id, bets[1].id, "void"), new_suspend_market("final")]
    producer.submit_many(late)
    wait_for(lambda: drained(redis_client), 30, "the late intents")
    assert _statuses(db, late) == [("rejected", "market_closed"),
                                   ("rejected", "already_settled"),
                                   ("rejected", "already_settled"),
                                   ("rejected", "market_closed")]
    audit = procs.run("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_each_bet_a_market_settles_is_confirmed_to_its_user_with_its_payout(
        procs: Procs, redis_client: redis.Redis, producer: Producer) -> None:
    """What a subscriber sees: its bets' settlements, each with bet, result, payout and
    balance, published from the ledger by the confirmer."""
    procs.start("writer")
    procs.start("confirmer")
    won, lost = new_bet(81, 200, "final", "home", "2.50"), new_bet(81, 100, "final", "away",
                                                                    "3.00")
    producer.submit_many([new_deposit(81, 1_000), won, lost])
    producer.submit(new_settle_market("final", {"home": "won"}))

    def settlements() -> list[dict] | None:
        found = [json.loads(fields[b"outcome"]) for _, fields in
                 redis_client.xrange(c.user_confirmations(81))]
        found = [m for m in found if m["kind"] == "settle"]
        return found if len(found) == 2 else None

    got = wait_for(settlements, 30, "both settlements to be confirmed to the user")
    by_bet = {m["bet_id"]: m for m in got}
    assert (by_bet[won.id]["result"], by_bet[won.id]["payout"]) == ("won", 500)
    assert (by_bet[lost.id]["result"], by_bet[lost.id]["payout"]) == ("lost", 0)
    assert max(m["balance"] for m in got) == 1_000 - 300 + 500
    assert got[0]["seq"] < got[1]["seq"] and all(m["status"] == "accepted" for m in got)


def test_the_trading_desk_results_a_market_from_the_cli(
        procs: Procs, redis_client: redis.Redis, producer: Producer) -> None:
    procs.start("writer")
    producer.submit_many([new_deposit(91, 1_000), new_bet(91, 100, "cup", "home", "2.00"),
                          new_bet(91, 100, "cup", "away", "2.00")])
    wait_for(lambda: drained(redis_client), 30, "the bets to be placed")
    bad = procs.run("market", "settle", "cup", "--result", "home=maybe")
    assert bad.returncode == 2 and "SELECTION=won|lost|void" in bad.stderr
    none = procs.run("market", "settle", "cup")
    assert none.returncode == 2 and "at least one --result" in none.stderr
    done = procs.run("market", "settle", "cup", "--result", "home=won", "--others", "void",
                     "--kid", "trading")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "settle_market 'cup': accepted" in done.stdout
    wait_for(lambda: "market 'cup': closed" in procs.run("market", "status", "cup").stdout,
             30, "the market to close")
    assert "0 open bets" in procs.run("market", "status", "cup").stdout
    again = procs.run("market", "settle", "cup", "--result", "home=lost")
    assert again.returncode == 1 and "(already_settled)" in again.stdout


def test_a_load_with_markets_runs_their_whole_life(procs: Procs, redis_client: redis.Redis,
                                                   env: dict[str, str]) -> None:
    db = env["BETSTREAM_DB"]
    procs.start("writer")
    load = procs.run("load", "--users", "20", "--bets", "1000", "--markets", "2", "--seed",
                     "5", "--quiet", "--json")
    assert load.returncode == 0, load.stdout + load.stderr
    by_kind = json.loads(load.stdout)["by_kind"]
    assert by_kind["settle_market"] == 2 and by_kind["suspend_market"] >= 1
    wait_for(lambda: drained(redis_client), 60, "the writer to take the load")
    wait_for(lambda: query(db, "SELECT market, state FROM markets ORDER BY market")
             == [("market-5-0", "closed"), ("market-5-1", "closed")], 60,
             "both markets resulted")
    reasons = dict(query(db, "SELECT reason, COUNT(*) FROM outcomes WHERE status = 'rejected' "
                             "GROUP BY reason"))
    assert reasons.get("market_suspended", 0) > 0, "bets met a suspended market"
    assert query(db, "SELECT COUNT(*) FROM bets WHERE status = 'open'") == [(0,)]
    assert procs.run("audit").returncode == 0
