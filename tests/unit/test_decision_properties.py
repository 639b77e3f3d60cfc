"""Money rules of the pure decision core (workers/core/decision.py), with dedupe and batch rows.

Random sequences of deposits, withdrawals, bets, settlements and market operations
(suspend, resume, settle a whole market) are cut into random batches and run through the
same pure steps the writer uses (split_repeats -> decide_batch -> build_batch, a resulted
market's bets settled in chunks as the pipeline takes them). An independent reference model written here with plain dict arithmetic must
agree on every outcome and balance, and the ledger invariants must hold after every step:
no player below zero, every transaction sums to zero, a bet settles once, and replaying the
same entries changes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from math import floor
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.contract import (
    AMOUNT_MAX,
    ODDS_MAX_X100,
    ODDS_MIN_X100,
    BetIntent,
    DepositIntent,
    ResumeMarketIntent,
    SettleIntent,
    SettleMarketIntent,
    SuspendMarketIntent,
    WithdrawalHoldIntent,
    WithdrawalIntent,
    WithdrawalPostIntent,
    WithdrawalVoidIntent,
    intent_body,
)
from producer.errors import InvariantViolation
from tests.support import candidate
from workers.core.batch_rows import Heads, OutcomeRow, Stored, build_batch
from workers.core.decision import (
    ACCEPTED,
    BALANCE_ABS_MAX,
    CASH,
    ESCROW,
    HOUSE,
    PENDING,
    REASONS,
    REJECTED,
    SYSTEM_ACCOUNTS,
    BetState,
    Book,
    Candidate,
    Decision,
    HoldState,
    MarketChange,
    decide,
    decide_batch,
    payout,
    settlement_postings,
)
from workers.core.hash_chain import GENESIS_HASH
from workers.core.hold_expiry import expiry_candidates
from workers.core.market_settlement import Settlement, chunk_candidates, chunk_change
from workers.core.repeats import Repeat, split_repeats

PROPS = settings(max_examples=200, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

USERS = [1, 2, 3, 4, 5]  # user 5 never deposits: it stays unknown
DEPOSITORS = [1, 2, 3, 4]
PRE_REASONS = ["stale", "replay", "forbidden_kind", "invalid"]
NONCE = "n" * 32


def uid(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def odds_text(x100: int, variant: int) -> str:
    """Several valid spellings of the same odds ("3", "3.0", "3.00")."""
    whole, cents = divmod(x100, 100)
    if variant == 1 and cents % 10 == 0:
        return f"{whole}.{cents // 10}"
    if variant == 2 and cents == 0:
        return str(whole)
    return f"{whole}.{cents:02d}"


# --- generating sequences ------------------------------------------------------------------

SMALL = st.integers(1, 600)
AMOUNTS = st.one_of(SMALL, SMALL, SMALL, st.integers(AMOUNT_MAX - 1000, AMOUNT_MAX))
ODDS = st.one_of(st.integers(ODDS_MIN_X100, 400), st.integers(ODDS_MIN_X100, ODDS_MAX_X100),
                 # 1.15, 2.55, 4.35 ... are where float(odds) * stake rounds the wrong way
                 st.sampled_from([ODDS_MIN_X100, 115, 200, 255, 333, 435, ODDS_MAX_X100]))

DEPOSIT = st.tuples(st.just("deposit"), st.sampled_from(DEPOSITORS), AMOUNTS)
WITHDRAWAL = st.tuples(st.just("withdrawal"), st.sampled_from(USERS), AMOUNTS)
BET_ANY = st.tuples(st.just("bet"), st.sampled_from(USERS), AMOUNTS, ODDS, st.integers(0, 2))
BET_SMALL = st.tuples(st.just("bet"), st.sampled_from(DEPOSITORS), SMALL, ODDS, st.integers(0, 2))
# settle: which earlier bet, counted back from the latest (None = a bet id nobody used),
# outcome, and who settles it (mostly its owner)
SETTLE = st.tuples(st.just("settle"), st.integers(0, 1) | st.integers(0, 3) | st.integers(0, 12)
                   | st.integers(0, 1) | st.none(),
                   st.sampled_from(["won", "lost", "void"]),
                   st.sampled_from(["owner"] * 10 + USERS))
# a bet immediately followed by its settlement (batch cuts may still separate the two)
BET_THEN_SETTLE = st.tuples(st.just("bet+settle"), st.sampled_from(DEPOSITORS), SMALL, ODDS,
                            st.integers(0, 2), st.sampled_from(["won", "lost", "void"]))
# bets are all on "final"; a market operation names it, or a market nobody bets on
MARKET_OP = st.one_of(
    st.tuples(st.sampled_from(["suspend_market", "resume_market"]),
              st.sampled_from(["final", "final", "other"])),
    st.tuples(st.just("settle_market"), st.sampled_from(["final", "final", "other"]),
              st.sampled_from(["won", "lost", "void"]), st.sampled_from(["lost", "void"])))
# holds (with no time, or 1-2 s: 10-20 candidates, INGRESS_STEP_MS apart), and posts or
# voids of a recent one (by its owner, mostly)
HOLD_OP = st.one_of(
    st.tuples(st.just("withdrawal_hold"), st.sampled_from(USERS), SMALL,
              st.sampled_from([None, None, 1, 2])),
    st.tuples(st.sampled_from(["withdrawal_post", "withdrawal_void"]), st.integers(0, 4),
              st.sampled_from(["owner"] * 8 + USERS)))
BASE_OPS = st.one_of(DEPOSIT, DEPOSIT, WITHDRAWAL, BET_SMALL, BET_SMALL, BET_SMALL, BET_ANY,
                     SETTLE, SETTLE, SETTLE, BET_THEN_SETTLE, BET_THEN_SETTLE, MARKET_OP,
                     HOLD_OP, HOLD_OP)
INGRESS_STEP_MS = 100  # between two candidates' ingress times
OPS = st.one_of(
    *[BASE_OPS] * 10,
    st.tuples(st.just("pre"), st.sampled_from(PRE_REASONS), BASE_OPS),
    st.tuples(st.just("resend"), st.integers(0, 60)),  # same intent, new stream entry
    st.tuples(st.just("conflict"), st.integers(0, 60)),  # same id, different body
    # settle the bet of the latest settle again (a new intent, maybe another outcome)
    st.tuples(st.just("resettle"), st.sampled_from(["won", "lost", "void"])),
    st.tuples(st.just("resettle"), st.sampled_from(["won", "lost", "void"])),
)


def expand(ops: list[tuple]) -> list[tuple]:
    """Split each bet+settle into a bet and, as the next entry, the settle of that bet."""
    out: list[tuple] = []
    for op in ops:
        pre, base = (op[1], op[2]) if op[0] == "pre" else (None, op)
        if base[0] != "bet+settle":
            out.append(op)
            continue
        bet_op = ("bet", *base[1:5])
        out.append(("pre", pre, bet_op) if pre else bet_op)
        out.append(("settle", 0, base[5], "owner"))  # 0 = the latest bet
    return out


def build(ops: list[tuple]) -> list[Candidate]:
    """Candidates in stream order: unique ids, entry ids "<ingress>-0" increasing."""
    ops = expand(ops)
    cands: list[Candidate] = []
    originals: list[Candidate] = []  # candidates with an id of their own
    bet_ids: list[tuple[str, int]] = []  # (bet id, owner) of every bet op, placed or not
    hold_ids: list[tuple[str, int]] = []  # (hold id, owner) of every hold op
    last_settle: SettleIntent | None = None
    for i, op in enumerate(ops):
        ingress = 1000 + i * INGRESS_STEP_MS
        entry = f"{ingress}-0"
        if op[0] in ("resend", "conflict"):
            if not originals:
                continue
            orig = originals[op[1] % len(originals)]
            if op[0] == "resend":
                cands.append(msgspec.structs.replace(orig, entry_id=entry, ingress_ms=ingress))
            else:
                sha = hashlib.sha256(b"another body" + entry.encode()).digest()
                cands.append(msgspec.structs.replace(orig, entry_id=entry, ingress_ms=ingress,
                                                 body_sha=sha))
            continue
        pre = None
        if op[0] == "pre":
            pre, op = op[1], op[2]
        if op[0] == "resettle":
            if last_settle is None:
                continue
            op = ("settle_exact", last_settle.bet_id, op[1], last_settle.user_id)
        intent = make_intent(op, uid(i + 1), bet_ids, hold_ids)
        if intent.kind == "settle":
            last_settle = intent
        if pre == "invalid":  # signed body failed validation: no intent, just identity
            sha = hashlib.sha256(b"invalid body" + entry.encode()).digest()
            cand = Candidate(entry, ingress, intent.id, intent.kind, intent.user_id, sha, None,
                             pre_reason="invalid", detail="amount: bad", kid="k")
        else:
            sha = hashlib.sha256(intent_body(intent)).digest()
            cand = Candidate.of(entry, ingress, intent, sha, "k")
            if pre is not None:
                cand = cand.rejected_early(pre, "test")
        cands.append(cand)
        originals.append(cand)
    return cands


def make_intent(op: tuple, intent_id: str, bet_ids: list[tuple[str, int]],
                hold_ids: list[tuple[str, int]] | None = None) -> Any:
    common = dict(id=intent_id, nonce=NONCE, issued_at=1)
    kind = op[0]
    if kind == "withdrawal_hold":
        (hold_ids if hold_ids is not None else []).append((intent_id, op[1]))
        return WithdrawalHoldIntent(kind=kind, user_id=op[1], amount=op[2], timeout_s=op[3],
                                    **common)
    if kind in ("withdrawal_post", "withdrawal_void"):
        holds = hold_ids or [(uid(10**9 + 7), 1)]  # none yet: one that never existed
        hold_id, owner = holds[-1 - op[1] % len(holds)]
        user = owner if op[2] == "owner" else op[2]
        intent_type = WithdrawalPostIntent if kind == "withdrawal_post" else WithdrawalVoidIntent
        return intent_type(kind=kind, user_id=user, hold_id=hold_id, **common)
    if kind == "deposit":
        return DepositIntent(kind="deposit", user_id=op[1], amount=op[2], **common)
    if kind == "withdrawal":
        return WithdrawalIntent(kind="withdrawal", user_id=op[1], amount=op[2], **common)
    if kind == "bet":
        bet_ids.append((intent_id, op[1]))
        return BetIntent(kind="bet", user_id=op[1], amount=op[2], market="final",
                         selection="home", odds=odds_text(op[3], op[4]), **common)
    if kind == "settle_market":  # the bets' selection ("home") gets op[2]
        return SettleMarketIntent(kind=kind, market=op[1], results={"home": op[2]},
                                  others=op[3], **common)
    if kind in ("suspend_market", "resume_market"):
        intent_type = SuspendMarketIntent if kind == "suspend_market" else ResumeMarketIntent
        return intent_type(kind=kind, market=op[1], **common)
    if kind == "settle_exact":
        return SettleIntent(kind="settle", user_id=op[3], bet_id=op[1], outcome=op[2], **common)
    _, ref, outcome, who = op
    if ref is None or not bet_ids:
        bet_id, owner = uid(10**9 + (ref or 0)), 1  # never used as a bet id
    else:
        bet_id, owner = bet_ids[-1 - ref % len(bet_ids)]  # mostly recent bets
    user = owner if who == "owner" else who
    return SettleIntent(kind="settle", user_id=user, bet_id=bet_id, outcome=outcome, **common)


def cut(items: list, cuts: list[int]) -> list[list]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(items)}), len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


# --- the pure writer pipeline (what workers/writer/batch_pipeline.py does, without Redis/SQLite) --------


@dataclass
class Ledger:
    """The 'store' of the simulation: balances, bets, outcomes and heads after each commit."""

    balances: dict[int, int] = field(default_factory=lambda: {a: 0 for a in SYSTEM_ACCOUNTS})
    bets: dict[str, BetState] = field(default_factory=dict)
    markets: dict[str, str] = field(default_factory=dict)
    by_id: dict[str, OutcomeRow] = field(default_factory=dict)
    by_entry: dict[str, OutcomeRow] = field(default_factory=dict)
    heads: Heads = Heads(0, 0, 0, GENESIS_HASH)
    decisions: list[Decision] = field(default_factory=list)
    repeats: list[Repeat] = field(default_factory=list)
    fresh_counts: list[int] = field(default_factory=list)
    chunk_max: int = 0  # bets a batch settles for a resulted market (0: none, as decide_batch)
    settlements: list[Settlement] = field(default_factory=list)
    holds: dict[str, HoldState] = field(default_factory=dict)
    now: int = 0  # the batch's clock: its last candidate's ingress time
    expire_holds: bool = True  # the writer's own voids of holds past their time

    def stored(self) -> Stored:
        return Stored(dict(self.by_id), dict(self.by_entry))

    def chunk(self) -> tuple[list[Candidate], MarketChange | None]:
        """As the pipeline: the first resulted market's next open bets, in bet order."""
        if not (self.settlements and self.chunk_max):
            return [], None
        first = self.settlements[0]
        bets = sorted((b for b in self.bets.values() if b.market == first.market
                       and b.status == "open" and first.through < b.seq < first.seq),
                      key=lambda b: b.seq)[:self.chunk_max]
        return (chunk_candidates(first, bets, 5),
                chunk_change(first, bets, self.chunk_max))

    def due(self, fresh: list[Candidate]) -> list[HoldState]:
        """As the pipeline: holds open and due by the batch's clock, soonest first, but
        those the batch's own posts or voids name."""
        if not self.expire_holds:
            return []
        named = {c.intent.hold_id for c in fresh if c.intent is not None
                 and c.kind in ("withdrawal_post", "withdrawal_void")}
        return sorted((h for h in self.holds.values() if h.state == "open"
                       and h.expires_at is not None and h.expires_at <= self.now
                       and h.id not in named), key=lambda h: (h.expires_at, h.id))

    def run_batch(self, batch: list[Candidate], check_step=None) -> list[Decision]:
        fresh, repeats = split_repeats(batch, self.stored())
        self.repeats += repeats
        self.now = max([self.now, *(c.ingress_ms for c in batch)])
        chunk, change = self.chunk()
        expiring = self.due(fresh)
        fresh += chunk + expiry_candidates(expiring, self.now)
        self.fresh_counts.append(len(fresh))
        wanted = {c.user_id for c in fresh} | set(SYSTEM_ACCOUNTS)
        settles = {c.intent.bet_id for c in fresh if c.kind == "settle" and c.intent}
        closing = {c.intent.hold_id for c in fresh if c.intent is not None
                   and c.kind in ("withdrawal_post", "withdrawal_void")}
        book = Book({a: self.balances[a] for a in wanted if a in self.balances},
                    {b: msgspec.structs.replace(self.bets[b]) for b in settles if b in self.bets},
                    {m: st for m, st in self.markets.items() if st != "open"},
                    {h: self.holds[h] for h in closing if h in self.holds})
        decisions, book = decide_batch(fresh, book)
        if not decisions and change is None:
            return []
        write = build_batch(decisions, self.heads, epoch=1, now=5, chunk=change)
        # "commit": the store applies the batch's rows
        for acc, delta, _ in write.balance_deltas:
            self.balances[acc] = self.balances.get(acc, 0) + delta
        for acc, bal in book.balances.items():  # accounts opened with a zero balance too
            assert self.balances.get(acc, 0) == bal, "deltas disagree with the book"
            self.balances[acc] = bal
        for d, outcome in zip(decisions, write.outcomes, strict=True):
            if d.new_bet:
                self.bets[d.new_bet.id] = BetState(d.new_bet.id, d.new_bet.user_id,
                                                   d.new_bet.stake, d.new_bet.odds, "open",
                                                   outcome.seq, d.new_bet.market,
                                                   d.new_bet.selection)
            if d.settled_bet:
                self.bets[d.settled_bet.id].status = d.settled_bet.status
        for market_change, seq in write.market_changes:
            self.follow(market_change, seq)
        for hold_id, user, amount, expires_at, _ in write.new_holds:
            self.holds[hold_id] = HoldState(hold_id, user, amount, "open", expires_at)
        for state, _, hold_id in write.closed_holds:
            assert self.holds[hold_id].state == "open", "a hold closes once"
            self.holds[hold_id] = msgspec.structs.replace(self.holds[hold_id], state=state)
        for o in write.outcomes:
            if o.reason != "id_conflict":
                self.by_id.setdefault(o.id, o)
            self.by_entry[o.entry_id] = o
        self.heads = write.after
        self.decisions += decisions
        return decisions

    def follow(self, change: MarketChange, seq: int) -> None:
        self.markets[change.market] = change.state
        if change.settlement is not None:
            self.settlements.append(Settlement.of(change.market, change.settlement, 0, seq))
        elif change.state == "closed":
            self.settlements = [x for x in self.settlements if x.market != change.market]
        elif change.settled_through is not None:
            self.settlements = [msgspec.structs.replace(x, through=change.settled_through)
                                if x.market == change.market else x for x in self.settlements]

    def run(self, cands: list[Candidate], cuts: list[int]) -> None:
        for batch in cut(cands, cuts):
            self.run_batch(batch)
            assert sum(self.balances.values()) == 0
        while self.settlements and self.chunk_max:  # the writer's batches of its own work
            self.run_batch([])


# --- the independent reference model -----------------------------------------------------




def reference(cands: list[Candidate], cuts: list[int] | None = None,
              chunk_max: int = 0) -> tuple[list[tuple], dict[int, int]]:
    """Expected (id, status, reason, balance) per first-time candidate (and per bet a
    settle_market settles), and final balances.

    Written from docs/ledger.md and docs/wire-contract.md alone: plain dicts, Fraction for
    payouts, no project helpers. A resulted market's open bets settle ``chunk_max`` at a
    time, in the order they were placed, at the end of each batch after the one that
    resulted it (0: never, as decide_batch alone), then in batches of their own.
    """
    bal: dict[int, int] = {0: 0, -1: 0, -2: 0, -3: 0}
    bets: dict[str, list] = {}  # id -> [owner, stake, odds Fraction, status, market, selection]
    holds: dict[str, list] = {}  # id -> [owner, amount, state, expires_at or None]
    first_sha: dict[str, bytes] = {}
    out: list[tuple] = []
    suspended: set[str] = set()  # markets whose bets are refused
    resulted: set[str] = set()  # markets a settle_market closed
    queue: list[dict] = []  # resulted markets whose bets are still to settle, oldest first

    def fits(changes: dict[int, int]) -> bool:
        return all(abs(bal.get(a, 0) + d) <= 2**62 for a, d in changes.items())

    def settle_changes(bet: list, outcome: str) -> dict[int, int]:
        user, stake = bet[0], bet[1]
        if outcome == "won":
            paid = floor(stake * bet[2])
            change = {-2: -stake, -1: -(paid - stake)}
            change[user] = change.get(user, 0) + paid
            return change
        if outcome == "lost":
            return {-2: -stake, -1: stake}
        return {-2: -stake, user: stake}

    def apply(changes: dict[int, int]) -> None:
        for acc, d in changes.items():
            bal[acc] = bal.get(acc, 0) + d

    def market_op(cand: Candidate, it: Any, shown: Any) -> None:
        if it.market in resulted:
            reason = "already_settled" if it.kind == "settle_market" else "market_closed"
            out.append((cand.id, "rejected", reason, None))
            return
        if it.kind == "settle_market":
            resulted.add(it.market)
            pending.append({"market": it.market, "id": it.id, "results": it.results,
                            "others": it.others, "after": -1})
        else:
            (suspended.add if it.kind == "suspend_market" else suspended.discard)(it.market)
        out.append((cand.id, "accepted", None, None))

    def one(cand: Candidate) -> None:
        user = cand.user_id
        shown = bal.get(user) if user > 0 else None  # a market's outcome shows no balance
        if cand.id in first_sha:
            if first_sha[cand.id] != cand.body_sha:
                out.append((cand.id, "rejected", "id_conflict", shown))
            return  # a repeat: its original outcome again, no new decision
        first_sha[cand.id] = cand.body_sha
        if cand.pre_reason:
            out.append((cand.id, "rejected", cand.pre_reason, shown))
            return
        it = cand.intent
        if it.kind in ("suspend_market", "resume_market", "settle_market"):
            market_op(cand, it, shown)
            return
        if it.kind in ("withdrawal_post", "withdrawal_void"):
            close_hold(cand, it, by_writer=False)
            return
        change: dict[int, int] = {}
        reason = None
        if it.kind == "bet" and it.market in resulted:
            reason = "market_closed"
        elif it.kind == "bet" and it.market in suspended:
            reason = "market_suspended"
        elif it.kind == "deposit":
            change = {0: -it.amount, user: it.amount}
        elif it.kind in ("withdrawal", "bet", "withdrawal_hold"):
            if user not in bal:
                reason = "unknown_user"
            elif bal[user] < it.amount:
                reason = "insufficient_funds"
            else:
                to = {"withdrawal": 0, "bet": -2, "withdrawal_hold": -3}[it.kind]
                change = {user: -it.amount, to: it.amount}
        else:
            bet = bets.get(it.bet_id)
            if bet is None or bet[0] != user:
                reason = "unknown_bet"
            elif bet[3] != "open" or bet[4] in resulted:
                reason = "already_settled"
            else:
                change = settle_changes(bet, it.outcome)
        if reason is None and not fits(change):
            reason = "invalid"
        if reason is not None:
            out.append((cand.id, "rejected", reason, bal.get(user)))
            return
        apply(change)
        if it.kind == "bet":
            bets[it.id] = [user, it.amount, Fraction(it.odds), "open", it.market, it.selection]
        if it.kind == "withdrawal_hold":
            expires = cand.ingress_ms + it.timeout_s * 1000 if it.timeout_s else None
            holds[it.id] = [user, it.amount, "open", expires, batch_no]
        if it.kind == "settle":
            bets[it.bet_id][3] = it.outcome
        out.append((cand.id, "accepted", None, bal[user]))

    def close_hold(cand: Candidate, it: Any, by_writer: bool) -> None:
        user, hold = cand.user_id, holds.get(it.hold_id)
        if hold is None or hold[0] != user:
            out.append((cand.id, "rejected", "unknown_hold", bal.get(user)))
            return
        late = hold[3] is not None and cand.ingress_ms >= hold[3]
        if hold[2] != "open" or (late and not by_writer):
            out.append((cand.id, "rejected", "hold_closed", bal.get(user)))
            return
        post = it.kind == "withdrawal_post"
        apply({-3: -hold[1], 0 if post else user: hold[1]})
        hold[2] = "posted" if post else "expired" if by_writer else "voided"
        out.append((cand.id, "accepted", None, bal[user]))

    def expire(batch: list[Candidate]) -> None:
        """At a batch's end: holds of earlier batches due by its last ingress, soonest
        first, but those its own posts and voids name (with an intent)."""
        named = {c.intent.hold_id for c in batch if c.intent is not None
                 and c.kind in ("withdrawal_post", "withdrawal_void") and c.id in fresh_ids}
        due = sorted((h[3], hid) for hid, h in holds.items() if h[2] == "open"
                     and h[3] is not None and h[3] <= now and h[4] < batch_no
                     and hid not in named)
        for _, hid in due:
            name = f"expire:{hid}"
            expiry = Candidate(f"writer:{name}", now, name, "withdrawal_void", holds[hid][0],
                               b"", None)
            close_hold(expiry, WithdrawalVoidIntent.model_construct(
                kind="withdrawal_void", hold_id=hid), by_writer=True)

    def take_chunk() -> None:
        """At a batch's end: the next bets of the oldest resulted market it knew of."""
        if not chunk_ready or not chunk_max:
            return
        s = chunk_ready[0]
        ids = list(bets)
        todo = [(n, b) for n, b in enumerate(ids) if n > s["after"]
                and bets[b][4] == s["market"] and bets[b][3] == "open"][:chunk_max]
        for n, bet_id in todo:
            bet = bets[bet_id]
            outcome = s["results"].get(bet[5], s["others"])
            apply(settle_changes(bet, outcome))
            bet[3] = outcome
            out.append((f"settle:{s['id']}:{bet_id}", "accepted", None, bal[bet[0]]))
            s["after"] = n
        if len(todo) < chunk_max:
            queue.remove(s)

    batches = cut(cands, cuts) if cuts is not None else [cands]
    now = 0
    for batch_no, batch in enumerate(batches):
        chunk_ready = list(queue)  # what earlier batches resulted
        pending: list[dict] = []
        now = max([now, *(c.ingress_ms for c in batch)])
        seen_before = set(first_sha)
        fresh_ids = {c.id for c in batch if c.id not in seen_before}
        for cand in batch:
            one(cand)
        take_chunk()
        if chunk_max:  # the writer's own work, as its pipeline does it
            expire(batch)
        queue.extend(pending)
    batch_no = len(batches)
    while queue and chunk_max:  # the writer's batches of its own work
        chunk_ready, pending, fresh_ids = list(queue), [], set()
        take_chunk()
        expire([])
        batch_no += 1
    return out, bal


# --- properties --------------------------------------------------------------------------

# a few deposits first so that most sequences have money to move, then anything at all
SEQUENCES = st.builds(lambda funding, rest: funding + rest,
                      st.lists(DEPOSIT, min_size=2, max_size=6),
                      st.lists(OPS, min_size=10, max_size=60))
CUTS = st.lists(st.integers(0, 130), max_size=15)


@PROPS
@given(SEQUENCES, CUTS, st.integers(1, 4))
def test_decisions_agree_with_an_independent_reference_model(ops: list[tuple],
                                                            cuts: list[int],
                                                            chunk_max: int) -> None:
    """Every outcome (status, reason, balance after) and every final balance is what the
    documented rules say, however the stream is cut into batches and a resulted market's
    bets into chunks."""
    cands = build(ops)
    ledger = Ledger(chunk_max=chunk_max)
    ledger.run(cands, cuts)
    expected, balances = reference(cands, cuts, chunk_max)
    got = [(d.candidate.id, d.status, d.reason, d.balance) for d in ledger.decisions]
    assert got == expected
    assert ledger.balances == balances


@PROPS
@given(SEQUENCES, CUTS)
def test_decide_batch_on_one_book_matches_the_reference(ops: list[tuple], cuts: list[int]) -> None:
    """decide_batch alone, on one Book carried across batches (ids unique, so no dedupe
    needed), gives the reference outcomes and leaves the reference balances in the Book."""
    seen: set[str] = set()
    cands = [c for c in build(ops) if not (c.id in seen or seen.add(c.id))]
    book = Book({CASH: 0, HOUSE: 0, ESCROW: 0, PENDING: 0})
    decisions = []
    for batch in cut(cands, cuts):
        decided, book = decide_batch(batch, book)
        decisions += decided
    expected, balances = reference(cands, cuts)  # no chunks: decide_batch settles no market
    assert [(d.candidate.id, d.status, d.reason, d.balance) for d in decisions] == expected
    assert dict(book.balances) == balances
    assert sum(book.balances.values()) == 0


@PROPS
@given(SEQUENCES, CUTS)
def test_ledger_invariants_hold_after_every_decision(ops: list[tuple], cuts: list[int]) -> None:
    """No player below zero, every transaction sums to zero, the books balance, balances are
    the sum of the postings, rejections post nothing and carry a documented reason."""
    ledger = Ledger()
    ledger.run(build(ops), cuts)
    running: dict[int, int] = defaultdict(int)
    for d in ledger.decisions:
        assert d.status in (ACCEPTED, REJECTED)
        if d.status == REJECTED:
            assert d.postings == () and d.new_bet is None and d.settled_bet is None
            assert d.reason in REASONS
            continue
        assert d.reason is None
        assert bool(d.postings) != (d.market_change is not None), "money moves, or a market"
        assert sum(amount for _, amount in d.postings) == 0
        for account, amount in d.postings:
            running[account] += amount
            assert account <= 0 or running[account] >= 0, f"player {account} below zero"
            assert abs(running[account]) <= BALANCE_ABS_MAX
        user = d.candidate.user_id
        assert d.balance == (running[user] if user > 0 else None)
        assert sum(running.values()) == 0
    assert all(ledger.balances.get(a, 0) == v for a, v in running.items())
    assert all(v == running[a] for a, v in ledger.balances.items())
    assert all(v >= 0 for a, v in ledger.balances.items() if a > 0)


@PROPS
@given(SEQUENCES, CUTS)
def test_bets_settle_at_most_once_and_pay_exact_integer_payouts(ops: list[tuple],
                                                               cuts: list[int]) -> None:
    """A bet settles once (later settles are already_settled); a win pays floor(stake x odds);
    the house P&L is lost stakes minus net winnings; escrow holds exactly the open stakes."""
    ledger = Ledger(chunk_max=2)  # a resulted market's bets settle too, two a batch
    ledger.run(build(ops), cuts)
    placed: dict[str, Decision] = {}
    settled: dict[str, str] = {}
    resulted: set[str] = set()  # markets a settle_market closed: their bets settle with it
    house = 0
    for d in ledger.decisions:
        intent = d.candidate.intent
        if d.status == ACCEPTED and isinstance(intent, SettleMarketIntent):
            resulted.add(intent.market)
        if d.status == ACCEPTED and isinstance(intent, BetIntent):
            assert d.new_bet is not None and d.new_bet.stake == intent.amount
            assert d.postings == ((intent.user_id, -intent.amount), (ESCROW, intent.amount))
            placed[intent.id] = d
        if d.candidate.kind != "settle" or d.candidate.pre_reason:
            continue
        bet = placed.get(intent.bet_id)
        owned = bet is not None and bet.candidate.user_id == intent.user_id
        by_market = d.candidate.entry_id.startswith("writer:")
        if not owned:
            assert (d.status, d.reason) == (REJECTED, "unknown_bet")
        elif intent.bet_id in settled or (bet.candidate.intent.market in resulted
                                          and not by_market):
            assert (d.status, d.reason) == (REJECTED, "already_settled")
        elif d.status == ACCEPTED:
            settled[intent.bet_id] = intent.outcome
            stake, odds = bet.candidate.intent.amount, bet.candidate.intent.odds
            paid = floor(stake * Fraction(odds))
            assert payout(stake, odds) == paid
            assert d.settled_bet is not None and d.settled_bet.status == intent.outcome
            postings = dict(d.postings)
            assert postings[ESCROW] == -stake
            if intent.outcome == "won":
                assert postings[intent.user_id] == paid
                # a house row of 0 (payout == stake) is left out: 0 is not a movement
                assert postings.get(HOUSE, 0) == -(paid - stake)
                assert 0 not in postings.values()
                house -= paid - stake
            elif intent.outcome == "lost":
                assert postings[HOUSE] == stake and intent.user_id not in postings
                house += stake
            else:
                assert postings[intent.user_id] == stake and HOUSE not in postings
        else:
            assert d.reason == "invalid"  # only a balance bound may refuse a valid settle
    accepted_settles = Counter(d.candidate.intent.bet_id for d in ledger.decisions
                               if d.status == ACCEPTED and d.candidate.kind == "settle")
    assert all(n == 1 for n in accepted_settles.values())
    assert set(accepted_settles) == set(settled)
    assert ledger.balances[HOUSE] == house
    open_stakes = sum(d.candidate.intent.amount for bid, d in placed.items() if bid not in settled)
    assert ledger.balances[ESCROW] == open_stakes
    deposits = sum(d.candidate.intent.amount for d in ledger.decisions if d.status == ACCEPTED
                   and isinstance(d.candidate.intent, DepositIntent))
    withdrawals = sum(d.candidate.intent.amount for d in ledger.decisions if d.status == ACCEPTED
                      and isinstance(d.candidate.intent, WithdrawalIntent))
    withdrawals += sum(d.closed_hold.amount for d in ledger.decisions  # holds paid out
                       if d.closed_hold is not None and d.closed_hold.state == "posted")
    assert ledger.balances[CASH] == withdrawals - deposits


@PROPS
@given(SEQUENCES, CUTS, CUTS)
def test_replaying_the_same_sequence_twice_changes_nothing(ops: list[tuple], cuts: list[int],
                                                           cuts2: list[int]) -> None:
    """Redelivered entries (same entry ids) and re-sent intents (same ids, new entries) get
    their original outcome again and never a second effect. (Holds do not fall due while
    the same entries come again: the writer's own work is not what is replayed here.)"""
    cands = build(ops)
    ledger = Ledger(expire_holds=False)
    ledger.run(cands, cuts)
    outcomes = dict(ledger.by_entry)
    balances, bets = dict(ledger.balances), {k: msgspec.structs.replace(v)
                                             for k, v in ledger.bets.items()}
    heads, decided = ledger.heads, len(ledger.decisions)
    assert len(outcomes) == decided  # exactly one outcome per first-time entry

    # 1. redelivery of every entry: all repeats, each with its own stored outcome
    ledger.repeats, ledger.fresh_counts = [], []
    ledger.run(cands, cuts2)
    assert sum(ledger.fresh_counts) == 0
    assert len(ledger.decisions) == decided and ledger.heads == heads
    assert ledger.balances == balances and ledger.bets == bets
    assert [r.candidate for r in ledger.repeats] == cands
    for rep in ledger.repeats:
        first = ledger.by_id.get(rep.candidate.id)
        stored = outcomes.get(rep.candidate.entry_id)
        if stored is not None:  # decided itself: redelivery, not a duplicate
            assert rep.outcome == stored and not rep.duplicate
        else:  # it was itself a repeat in the first run
            assert rep.outcome is not None and rep.outcome == first and rep.duplicate

    # 2. every intent re-sent under a new entry id: duplicates of the first outcome
    resent = [msgspec.structs.replace(c, entry_id=f"{9000 + i}-0", ingress_ms=9000 + i)
              for i, c in enumerate(cands)]
    ledger.repeats = []
    ledger.run(resent, cuts2)
    assert ledger.balances == balances and ledger.bets == bets
    fresh_again = ledger.decisions[decided:]
    # only bodies that conflicted with an earlier one are decided again, as id_conflict
    assert all((d.status, d.reason, d.postings) == (REJECTED, "id_conflict", ())
               for d in fresh_again)
    for rep in ledger.repeats:
        assert rep.duplicate and rep.outcome is not None
        assert rep.outcome == ledger.by_id[rep.candidate.id]
        assert rep.outcome.body_sha == rep.candidate.body_sha


@PROPS
@given(SEQUENCES, CUTS)
def test_batch_cuts_do_not_change_outcomes(ops: list[tuple], cuts: list[int]) -> None:
    """Outcomes of what the stream brings depend on its order only, not on how the writer
    batches it. (The writer's own work, voiding holds past their time and settling a
    resulted market, runs at batch ends by the clock: the reference model test covers it.)"""
    cands = build(ops)
    one, many = Ledger(expire_holds=False), Ledger(expire_holds=False)
    one.run(cands, [])
    many.run(cands, cuts)
    assert [(d.candidate.entry_id, d.status, d.reason, d.balance) for d in one.decisions] == \
        [(d.candidate.entry_id, d.status, d.reason, d.balance) for d in many.decisions]
    assert one.balances == many.balances
    assert one.heads.seq == many.heads.seq and one.heads.entry_id == many.heads.entry_id


# --- worked examples (readable documentation of the rules) --------------------------------


def dep(user: int, amount: int, n: int = 1) -> DepositIntent:
    return DepositIntent(id=uid(n), kind="deposit", user_id=user, amount=amount, nonce=NONCE,
                         issued_at=1)


def wd(user: int, amount: int, n: int = 2) -> WithdrawalIntent:
    return WithdrawalIntent(id=uid(n), kind="withdrawal", user_id=user, amount=amount,
                            nonce=NONCE, issued_at=1)


def bet(user: int, amount: int, odds: str, n: int = 3) -> BetIntent:
    return BetIntent(id=uid(n), kind="bet", user_id=user, amount=amount, market="m",
                     selection="s", odds=odds, nonce=NONCE, issued_at=1)


def settle(user: int, bet_n: int, outcome: str, n: int = 4) -> SettleIntent:
    return SettleIntent(id=uid(n), kind="settle", user_id=user, bet_id=uid(bet_n),
                        outcome=outcome, nonce=NONCE, issued_at=1)


def fresh_book() -> Book:
    return Book({CASH: 0, HOUSE: 0, ESCROW: 0, PENDING: 0})


def test_first_deposit_opens_the_account() -> None:
    """A deposit to an unknown user opens the account; cash goes negative by the same amount."""
    book = fresh_book()
    d = decide(candidate(dep(7, 1000)), book)
    assert (d.status, d.reason, d.balance) == (ACCEPTED, None, 1000)
    assert d.postings == ((CASH, -1000), (7, 1000))
    assert book.balances == {CASH: -1000, HOUSE: 0, ESCROW: 0, PENDING: 0, 7: 1000}


def test_unknown_user_cannot_withdraw_or_bet() -> None:
    """Without an account there is nothing to spend: unknown_user, balance None."""
    book = fresh_book()
    for intent in (wd(7, 1), bet(7, 1, "2.00")):
        d = decide(candidate(intent), book)
        assert (d.status, d.reason, d.balance, d.postings) == (REJECTED, "unknown_user", None, ())
    assert book.balances == {CASH: 0, HOUSE: 0, ESCROW: 0, PENDING: 0}


def test_spending_exactly_the_balance_is_allowed_one_more_is_not() -> None:
    """A player can spend down to zero, never below (no double spend, no overdraft)."""
    book = fresh_book()
    decide(candidate(dep(7, 100)), book)
    assert decide(candidate(bet(7, 101, "2.00")), book).reason == "insufficient_funds"
    d = decide(candidate(bet(7, 100, "2.00")), book)
    assert (d.status, d.balance) == (ACCEPTED, 0)
    assert decide(candidate(wd(7, 1)), book).reason == "insufficient_funds"
    assert book.balances[7] == 0 and book.balances[ESCROW] == 100


@pytest.mark.parametrize("stake,odds,paid", [
    (250, "2.50", 625), (99, "1.01", 99), (1, "1.99", 1), (3, "1.15", 3), (100, "1.15", 115),
    (7, "4.35", 30), (1, "1000", 1000), (AMOUNT_MAX, "1000.00", AMOUNT_MAX * 1000),
])
def test_payout_is_floor_of_stake_times_odds(stake: int, odds: str, paid: int) -> None:
    """Payouts are floor(stake x odds) in integer minor units, exact at any size."""
    assert payout(stake, odds) == paid == floor(stake * Fraction(odds))


def test_won_lost_void_postings_follow_the_design() -> None:
    """won: escrow -S, house -(P-S), player +P; lost: escrow -S, house +S; void: refund."""
    b = BetState(uid(3), 7, 250, "2.50", "open")
    assert settlement_postings(b, "won") == ((ESCROW, -250), (HOUSE, -375), (7, 625))
    assert settlement_postings(b, "lost") == ((ESCROW, -250), (HOUSE, 250))
    assert settlement_postings(b, "void") == ((ESCROW, -250), (7, 250))
    exact = BetState(uid(3), 7, 100, "1.15", "open")  # 100 * 1.15 == 114.99999999999999
    assert settlement_postings(exact, "won") == ((ESCROW, -100), (HOUSE, -15), (7, 115))
    with pytest.raises(ValueError):
        settlement_postings(b, "draw")


def test_a_bet_settles_once_and_only_by_its_owner() -> None:
    """Settling someone else's bet is unknown_bet; a second settlement is already_settled."""
    book = fresh_book()
    _, book = decide_batch([candidate(dep(7, 1000)), candidate(dep(8, 1000), 5),
                            candidate(bet(7, 250, "2.50"))], book)
    assert decide(candidate(settle(8, 3, "won")), book).reason == "unknown_bet"
    assert decide(candidate(settle(7, 99, "won")), book).reason == "unknown_bet"
    d = decide(candidate(settle(7, 3, "won")), book)
    assert (d.status, d.balance) == (ACCEPTED, 750 + 625)
    for outcome in ("won", "lost", "void"):
        again = decide(candidate(settle(7, 3, outcome, n=6)), book)
        assert (again.status, again.reason, again.postings) == (REJECTED, "already_settled", ())
    assert book.balances == {CASH: -2000, HOUSE: -375, ESCROW: 0, PENDING: 0, 7: 1375, 8: 1000}


def test_pre_rejected_candidates_never_touch_the_book() -> None:
    """stale/replay/forbidden/invalid intents are rejected with that reason and no effect."""
    book = fresh_book()
    decide(candidate(dep(7, 1000)), book)
    before = dict(book.balances)
    for reason in PRE_REASONS:
        d = decide(candidate(wd(7, 10)).rejected_early(reason, "why"), book)
        assert (d.status, d.reason, d.detail, d.balance, d.postings) == \
            (REJECTED, reason, "why", 1000, ())
    assert book.balances == before


def test_a_candidate_without_intent_and_reason_is_a_programmer_error() -> None:
    """The decision core refuses to guess: no intent and no reason raises InvariantViolation."""
    c = Candidate("1-0", 1, uid(1), "deposit", 7, b"", None)
    with pytest.raises(InvariantViolation):
        decide(c, fresh_book())


def test_balances_stay_within_the_supported_range() -> None:
    """A win that would push the house past +-2**62 is refused as invalid; the bet stays open."""
    book = Book({CASH: 0, HOUSE: -BALANCE_ABS_MAX + 100, ESCROW: 250, 7: BALANCE_ABS_MAX - 350},
                {uid(3): BetState(uid(3), 7, 250, "2.50", "open")})
    before = dict(book.balances)
    d = decide(candidate(settle(7, 3, "won")), book)
    assert (d.status, d.reason, d.postings) == (REJECTED, "invalid", ())
    assert book.balances == before and book.bets[uid(3)].status == "open"
    assert decide(candidate(settle(7, 3, "lost")), book).status == ACCEPTED


def test_a_refused_first_deposit_opens_no_account() -> None:
    """When cash is at its bound, a first deposit is refused and the user stays unknown."""
    book = Book({CASH: -BALANCE_ABS_MAX, HOUSE: BALANCE_ABS_MAX, ESCROW: 0})
    d = decide(candidate(dep(7, 1)), book)
    assert (d.status, d.reason, d.balance) == (REJECTED, "invalid", None)
    assert 7 not in book.balances


@PROPS
@given(SEQUENCES, CUTS)
def test_deciding_and_building_a_batch_leave_their_inputs_as_they_were(
        ops: list[tuple], cuts: list[int]) -> None:
    """The core returns new values: the book handed to decide_batch (balances and bet
    records) and the decisions handed to build_batch are unchanged afterwards."""
    seen: set[str] = set()
    cands = [c for c in build(ops) if not (c.id in seen or seen.add(c.id))]
    book = Book({CASH: 0, HOUSE: 0, ESCROW: 0, PENDING: 0})
    heads = Heads(0, 0, 0, GENESIS_HASH)
    for batch in cut(cands, cuts):
        given_book = copy.deepcopy((dict(book.balances), dict(book.bets), batch))
        decisions, after = decide_batch(batch, book)
        assert (dict(book.balances), dict(book.bets), batch) == given_book, "decide_batch"
        given_decisions = copy.deepcopy(decisions)
        write = build_batch(decisions, heads, epoch=1, now=5)
        assert decisions == given_decisions, "build_batch"
        heads, book = write.after, after
        for seq, bet_id, *_ in write.new_bets:  # as the store would load them: placed at seq
            book.bets[bet_id] = msgspec.structs.replace(book.bets[bet_id], seq=seq)


@pytest.mark.parametrize("chunk_max", [1, 2, 5])
@pytest.mark.parametrize("cuts", [[], [3], [4, 6], [5, 7, 8]])
def test_a_resulted_market_settles_in_chunks_as_the_reference_says(
        chunk_max: int, cuts: list[int]) -> None:
    """Three bets on "final", one suspended in between, the market resulted, a withdrawal
    of winnings that may not have arrived yet, a late bet and settle: the same outcomes
    and balances as the reference, however it is cut."""
    ops = [("deposit", 1, 500), ("deposit", 2, 500),
           ("bet", 1, 100, 250, 0), ("bet", 2, 100, 250, 0), ("suspend_market", "final"),
           ("bet", 1, 50, 250, 0), ("resume_market", "final"), ("bet", 2, 70, 250, 0),
           ("settle_market", "final", "won", "lost"), ("withdrawal", 1, 600),
           ("bet", 1, 10, 250, 0), ("settle", 1, "void", "owner"),  # 1: the bet before
           ("settle_market", "final", "lost", "void")]
    cands = build(ops)
    ledger = Ledger(chunk_max=chunk_max)
    ledger.run(cands, cuts)
    expected, balances = reference(cands, cuts, chunk_max)
    assert [(d.candidate.id, d.status, d.reason, d.balance) for d in ledger.decisions] == expected
    assert ledger.balances == balances
    settled = [d for d in ledger.decisions if d.candidate.entry_id.startswith("writer:")]
    assert len(settled) == 3 and all(d.status == ACCEPTED for d in settled), \
        "the three bets placed while open settle, each once"
    stream = {d.candidate.id: d.reason for d in ledger.decisions if d not in settled}
    late_bet, late_settle, second = (c.id for c in cands[-3:])
    assert (stream[late_bet], stream[late_settle], stream[second]) == (
        "market_closed", "already_settled", "already_settled")
