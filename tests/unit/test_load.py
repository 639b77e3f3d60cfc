"""The load generator's settlements: they refer to this load's own earlier bets, with the
right user, and now and then to a bet never placed or one settled already."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

from producer.contract import encode_body, parse_intent
from producer.load import LoadPlan, intents, market_intents


def _bodies(plan: LoadPlan) -> list[dict]:
    return list(intents(plan, random.Random(plan.seed)))


def test_settlements_follow_the_bets_they_settle() -> None:
    plan = LoadPlan(users=20, bets=5_000, settle_share=0.3, withdrawal_share=0.05, seed=3)
    bodies = _bodies(plan)
    assert len(bodies) == plan.users + plan.bets
    placed: dict[str, int] = {}
    settled: Counter[str] = Counter()
    never_placed = 0
    for body in bodies:
        parse_intent(encode_body(body))  # every body is a valid wire-contract intent
        if body["kind"] == "bet":
            placed[body["id"]] = body["user_id"]
        elif body["kind"] == "settle":
            assert body["outcome"] in ("won", "lost", "void") and "amount" not in body
            if body["bet_id"] in placed:
                assert placed[body["bet_id"]] == body["user_id"], "settled as the bettor"
                settled[body["bet_id"]] += 1
            else:
                never_placed += 1
    kinds = Counter(b["kind"] for b in bodies)
    assert 0.25 < kinds["settle"] / plan.bets < 0.35
    assert {b["outcome"] for b in bodies if b["kind"] == "settle"} == {"won", "lost", "void"}
    assert never_placed > 0, "some settlements name a bet that was never placed"
    assert max(settled.values()) > 1, "some bets are settled twice"
    assert sum(1 for n in settled.values() if n == 1) > kinds["settle"] // 2


def test_without_settles_the_load_is_what_it_was() -> None:
    """No settle share: no settlement, and the seeded choices are exactly those the load
    generator made before settlements existed (fingerprint taken from that version)."""
    plan = LoadPlan(users=5, bets=300, withdrawal_share=0.1, seed=11)
    bodies = _bodies(plan)
    assert "settle" not in {b["kind"] for b in bodies}
    choices = repr([(b["kind"], b["user_id"], b.get("amount"), b.get("odds"), b.get("market"),
                     b.get("selection")) for b in bodies])
    assert hashlib.sha256(choices.encode()).hexdigest()[:16] == "383101bece6f1667"


class _Accepting:
    """A producer whose stream takes every chunk (no Redis): only the sending is under test."""

    def __init__(self) -> None:
        from producer.signing import Key

        self._key = Key("any", b"0123456789abcdef0123456789abcdef", frozenset(), None)
        self.sent = 0

    def key_for(self, kind: str):
        return self._key

    def submit_fields(self, chunk: list) -> list[str]:
        self.sent += len(chunk)
        return [f"{i}-0" for i in range(len(chunk))]


def test_progress_ends_at_the_plans_total_when_copies_are_re_sent() -> None:
    """``make run`` showed 20245/20050: the re-sent copies counted against the plan."""
    from producer.load import run_load

    plan = LoadPlan(users=50, bets=3_000, duplicate_share=0.05, seed=5)
    seen: list[tuple[int, int]] = []
    producer = _Accepting()
    result = run_load(producer, plan, lambda done, total: seen.append((done, total)))
    assert result.duplicates > 0 and producer.sent == plan.users + plan.bets + result.duplicates
    assert seen[-1] == (plan.users + plan.bets, plan.users + plan.bets)
    assert all(done <= total for done, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_load_with_markets_suspends_resumes_and_results_each_of_them() -> None:
    """Markets of its own, some suspended and resumed on the way, each resulted once at the
    end, every body valid under the contract."""
    plan = LoadPlan(users=3, bets=400, markets=3, seed=7)
    bodies = list(intents(plan, random.Random(7)))
    assert len(bodies) == plan.users + plan.bets + market_intents(plan)
    for body in bodies:
        parse_intent(encode_body(body))
    ops = [(b["kind"], b["market"]) for b in bodies if b["kind"].endswith("_market")]
    toggles = [op for op in ops if op[0] != "settle_market"]
    assert toggles and all(a == "suspend_market" and b == "resume_market" and m == n
                           for (a, m), (b, n) in zip(toggles[::2], toggles[1::2]))
    assert ops[-3:] == [("settle_market", f"market-7-{i}") for i in range(3)]
    assert {b["market"] for b in bodies if b["kind"] == "bet"} == {
        f"market-7-{i}" for i in range(3)}
