"""Pure decision logic: what each authenticated intent does to the ledger. No I/O here.

The writer hands in candidates in stream order plus a working copy of the balances and
bets they touch; this module returns one decision per candidate (an outcome and its
double-entry postings) and updates the working copy. Because it is pure it is tested
exhaustively with hypothesis, apart from Redis and SQLite.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from producer.contract import (
    MARKET_KINDS,
    BetIntent,
    DepositIntent,
    Intent,
    MarketIntent,
    SettleIntent,
    WithdrawalHoldIntent,
    WithdrawalPostIntent,
    WithdrawalVoidIntent,
    odds_x100,
)
from producer.errors import InvariantViolation
from producer.fastparse import FastBet, FastDeposit, FastIntent, FastSettle
from producer.invariants import require

CASH: Final = 0  # the outside world: deposits come from it, withdrawals go to it
HOUSE: Final = -1  # the operator's profit and loss
ESCROW: Final = -2  # open stakes, held until their bet settles
PENDING: Final = -3  # withdrawals held until their payment is posted or voided
SYSTEM_ACCOUNTS: Final = (CASH, HOUSE, ESCROW, PENDING)
BALANCE_ABS_MAX: Final = 2**62  # every account stays far from SQLite's 64-bit limit

ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
REASONS: Final = (
    "insufficient_funds", "duplicate", "stale", "replay", "unknown_user", "invalid",
    "forbidden_kind", "unknown_bet", "already_settled", "id_conflict",
    "market_suspended", "market_closed", "unknown_hold", "hold_closed",
)
HOLD_OPEN: Final = "open"
HOLD_EXPIRED_DETAIL: Final = "expired"  # the detail of the writer's own void of a hold
# A market's state as the ledger keeps it (table markets); a market never named there is
# open. Closed is for good: no bet, suspension or resumption after it.
MARKET_OPEN: Final = "open"
MARKET_SUSPENDED: Final = "suspended"
MARKET_SETTLING: Final = "settling"  # a settle_market committed; its bets settle in chunks
MARKET_CLOSED: Final = "closed"
MARKET_RESULTED: Final = (MARKET_SETTLING, MARKET_CLOSED)
_MARKET_REFUSALS: Final = {MARKET_SUSPENDED: "market_suspended",
                           MARKET_SETTLING: "market_closed", MARKET_CLOSED: "market_closed"}
# Stream entry ids are "<ms>-<n>"; an entry id with this prefix is the writer's own work
# (a bet settled for a settle_market, a hold voided for its time), never read from the stream.
WRITER_ENTRY_PREFIX: Final = "writer:"
HOLD_CLOSING_KINDS: Final = frozenset({"withdrawal_post", "withdrawal_void"})  # ``hold_id``


def writers_own(entry_id: str) -> bool:
    """Whether an outcome's entry is the writer's own work rather than a stream entry."""
    return entry_id.startswith(WRITER_ENTRY_PREFIX)


# Records made for every intent (Candidate, Decision, BetState, and batch.OutcomeRow) are
# msgspec Structs with gc=False: built in C (~85 ns against ~270 for a slots dataclass's
# generated __init__, four per bet on the writer's busiest thread), and never tracked by
# the cyclic GC. That is safe because they hold only text, numbers, tuples, intents and
# other such records: none can be part of a reference cycle.


class Candidate(msgspec.Struct, gc=False):  # never mutated
    """An authenticated intent in stream order, with any reason found before deciding."""

    entry_id: str
    ingress_ms: int
    id: str
    kind: str
    user_id: int
    body_sha: bytes
    intent: Intent | FastIntent | None  # None when the signed body failed validation
    pre_reason: str | None = None
    detail: str | None = None
    kid: str = ""  # the key that signed it: nonces are unique per key

    @classmethod
    def of(cls, entry_id: str, ingress_ms: int, intent: Intent | FastIntent, body_sha: bytes,
           kid: str) -> Candidate:
        return cls(entry_id, ingress_ms, intent.id, intent.kind, intent.user_id, body_sha, intent,
                   kid=kid)

    def rejected_early(self, reason: str, detail: str | None = None) -> Candidate:
        """The same candidate, to be rejected with ``reason`` without touching the book."""
        return msgspec.structs.replace(self, pre_reason=reason, detail=detail)


class BetState(msgspec.Struct, gc=False):
    id: str
    user_id: int
    stake: int
    odds: str
    status: str  # open | won | lost | void
    seq: int | None = None  # seq of the outcome that placed it (None until committed)
    market: str = ""
    selection: str = ""


class HoldState(msgspec.Struct, gc=False):  # never mutated
    """A withdrawal hold: open until posted, voided or expired (``expires_at`` ms, if any)."""

    id: str
    user_id: int
    amount: int
    state: str  # open | posted | voided | expired
    expires_at: int | None = None


class MarketChange(msgspec.Struct, gc=False):  # never mutated
    """A market's new state, as a decision (or a settlement chunk) leaves it."""

    market: str
    state: str
    settlement: str | None = None  # settle_market: its id and results, as JSON
    settled_through: int | None = None  # the bet seq the settlement has reached


class Decision(msgspec.Struct, gc=False):  # never mutated
    candidate: Candidate
    status: str
    reason: str | None
    balance: int | None  # the user's balance after this intent; None for an unknown user
    postings: tuple[tuple[int, int], ...] = ()
    new_bet: BetState | None = None
    settled_bet: BetState | None = None
    detail: str | None = None
    market_change: MarketChange | None = None  # for market kinds
    new_hold: HoldState | None = None
    closed_hold: HoldState | None = None  # a hold posted, voided or expired by this intent
    ref: str | None = None  # its ledger rows' ref_id when not its own id: a bet, a hold
    rare: bool = False  # a market or hold decision: rows of their own (batch_rows)


@dataclass(slots=True)
class Book:
    """Working copy of the balances and bets a batch may touch (accounts absent = unknown)."""

    balances: MutableMapping[int, int]
    bets: MutableMapping[str, BetState] = field(default_factory=dict)
    markets: MutableMapping[str, str] = field(default_factory=dict)  # absent: open
    holds: MutableMapping[str, HoldState] = field(default_factory=dict)


def payout(stake: int, odds: str) -> int:
    """floor(stake x odds) in minor units, with integers only."""
    return stake * odds_x100(odds) // 100


def decide_batch(candidates: Sequence[Candidate], book: Book) -> tuple[list[Decision], Book]:
    """Decide every candidate in order: the decisions, and the book after their accepted
    effects. ``book`` itself is left as it was (its bets included)."""
    after = Book(dict(book.balances), dict(book.bets), dict(book.markets), dict(book.holds))
    return [decide(candidate, after) for candidate in candidates], after


def decide(candidate: Candidate, book: Book) -> Decision:
    """One intent against a batch's working book, which it updates: an outcome, and
    postings that sum to zero. Bet records in the book are replaced, never changed."""
    intent = candidate.intent
    if candidate.pre_reason is not None:
        return _reject(candidate, book, candidate.pre_reason, candidate.detail)
    if intent is None:  # (not require(): this runs for every intent)
        raise InvariantViolation("a candidate without an intent must carry a reason")
    # By kind, not by class: an intent is a pydantic model or its proven-equal fast struct.
    kind = intent.kind
    if kind == "bet":
        return _bet(candidate, intent, book)
    if kind == "deposit":
        return _deposit(candidate, intent, book)
    if kind == "withdrawal":
        return _move(candidate, book, intent.user_id, CASH, intent.amount)
    if kind == "settle":
        return _settle(candidate, intent, book)
    if kind in MARKET_KINDS:
        return _market(candidate, intent, book)
    if kind == "withdrawal_hold":
        return _hold(candidate, intent, book)
    if kind in HOLD_CLOSING_KINDS:
        return _close_hold(candidate, intent, book)
    raise TypeError(f"no decision for {type(intent).__name__}")  # programmer error


def _reject(candidate: Candidate, book: Book, reason: str, detail: str | None = None) -> Decision:
    user_id = candidate.user_id  # 0 for a market intent: no player, no balance to show
    balance = book.balances.get(user_id) if user_id > 0 else None
    return Decision(candidate, REJECTED, reason, balance, detail=detail)


def _deposit(candidate: Candidate, intent: DepositIntent | FastDeposit, book: Book) -> Decision:
    opened = intent.user_id not in book.balances
    if opened:
        book.balances[intent.user_id] = 0  # a first deposit opens the account
    decision = _move(candidate, book, CASH, intent.user_id, intent.amount)
    if opened and decision.status != ACCEPTED:
        del book.balances[intent.user_id]  # a refused first deposit opens nothing
        return _reject(candidate, book, decision.reason or "invalid", decision.detail)
    return decision


def _move(candidate: Candidate, book: Book, source: int, target: int, amount: int,
          bet: BetState | None = None) -> Decision:
    """Move ``amount`` from ``source`` to ``target`` (a player can never go below zero).
    With ``bet``, the amount is its stake, and the bet is placed if the move is accepted
    (one Decision per bet, not two: this runs for nearly every intent)."""
    user_id, balances = candidate.user_id, book.balances
    if user_id not in balances:
        return _reject(candidate, book, "unknown_user")
    if source > 0 and balances[source] < amount:
        return _reject(candidate, book, "insufficient_funds")
    postings = ((source, -amount), (target, amount))
    if not _within_bounds(book, postings):
        return _reject(candidate, book, "invalid", "balance would leave the supported range")
    _apply(book, postings)
    if bet is not None:
        book.bets[bet.id] = bet
    return Decision(candidate, ACCEPTED, None, balances[user_id], postings, new_bet=bet)


def _bet(candidate: Candidate, intent: BetIntent | FastBet, book: Book) -> Decision:
    if intent.id in book.bets:  # only reachable if an id was reused under another kind
        return _reject(candidate, book, "id_conflict")
    if book.markets:  # (most batches name no market that is not open)
        refusal = _MARKET_REFUSALS.get(book.markets.get(intent.market, MARKET_OPEN))
        if refusal is not None:
            return _reject(candidate, book, refusal)
    bet = BetState(intent.id, intent.user_id, intent.amount, intent.odds, "open",
                   market=intent.market, selection=intent.selection)
    return _move(candidate, book, intent.user_id, ESCROW, intent.amount, bet)


def _settle(candidate: Candidate, intent: SettleIntent | FastSettle, book: Book) -> Decision:
    bet = book.bets.get(intent.bet_id)
    if bet is None or bet.user_id != intent.user_id:
        return _reject(candidate, book, "unknown_bet")
    if bet.status != "open" or (book.markets.get(bet.market) in MARKET_RESULTED
                                and not writers_own(candidate.entry_id)):
        return _reject(candidate, book, "already_settled")  # (or its market's settlement is)
    postings = settlement_postings(bet, intent.outcome)
    if not _within_bounds(book, postings):
        return _reject(candidate, book, "invalid", "balance would leave the supported range")
    _apply(book, postings)
    settled = msgspec.structs.replace(bet, status=intent.outcome)
    book.bets[bet.id] = settled
    balance = book.balances[intent.user_id]
    return Decision(candidate, ACCEPTED, None, balance, postings, settled_bet=settled,
                    ref=bet.id)


def _market(candidate: Candidate, intent: MarketIntent, book: Book) -> Decision:
    """Suspend, resume or result a market: moves no money itself, changes what later
    intents on the market get. A resulted market stays closed. The outcome belongs to no
    player: no balance."""
    state = book.markets.get(intent.market, MARKET_OPEN)
    if state in MARKET_RESULTED:
        reason = "already_settled" if intent.kind == "settle_market" else "market_closed"
        return Decision(candidate, REJECTED, reason, None)
    settlement = None
    if intent.kind == "settle_market":
        new = MARKET_SETTLING
        settlement = msgspec.json.encode({"id": intent.id, "results": intent.results,
                                          "others": intent.others}).decode()
    else:
        new = MARKET_SUSPENDED if intent.kind == "suspend_market" else MARKET_OPEN
    book.markets[intent.market] = new
    change = MarketChange(intent.market, new, settlement, 0 if settlement else None)
    return Decision(candidate, ACCEPTED, None, None, market_change=change, rare=True)


def _hold(candidate: Candidate, intent: WithdrawalHoldIntent, book: Book) -> Decision:
    """Player -> pending: the amount is reserved for a payment provider's answer."""
    if intent.id in book.holds:  # only reachable if an id was reused under another kind
        return _reject(candidate, book, "id_conflict")
    decision = _move(candidate, book, intent.user_id, PENDING, intent.amount)
    if decision.status != ACCEPTED:
        return decision
    expires = (candidate.ingress_ms + intent.timeout_s * 1000 if intent.timeout_s is not None
               else None)
    hold = HoldState(intent.id, intent.user_id, intent.amount, HOLD_OPEN, expires)
    book.holds[hold.id] = hold
    return msgspec.structs.replace(decision, new_hold=hold, rare=True)


def _close_hold(candidate: Candidate, intent: WithdrawalPostIntent | WithdrawalVoidIntent,
                book: Book) -> Decision:
    """Post (pending -> cash) or void (pending -> player) an open hold of this player."""
    hold = book.holds.get(intent.hold_id)
    by_writer = writers_own(candidate.entry_id)  # its expiry
    refusal = _hold_refusal(candidate, hold, by_writer)
    if refusal is not None:
        return _reject(candidate, book, refusal)
    target = CASH if intent.kind == "withdrawal_post" else hold.user_id
    postings = ((PENDING, -hold.amount), (target, hold.amount))
    if not _within_bounds(book, postings):
        return _reject(candidate, book, "invalid", "balance would leave the supported range")
    _apply(book, postings)
    closed = msgspec.structs.replace(hold, state=_closed_state(intent.kind, by_writer))
    book.holds[hold.id] = closed
    return Decision(candidate, ACCEPTED, None, book.balances[hold.user_id], postings,
                    closed_hold=closed, detail=HOLD_EXPIRED_DETAIL if by_writer else None,
                    ref=hold.id, rare=True)


def _hold_refusal(candidate: Candidate, hold: HoldState | None, by_writer: bool) -> str | None:
    """unknown_hold (none of this player's), hold_closed (posted, voided, or past its time:
    only the writer's own void, its expiry, still takes it), or None."""
    if hold is None or hold.user_id != candidate.user_id:
        return "unknown_hold"
    late = hold.expires_at is not None and candidate.ingress_ms >= hold.expires_at
    return "hold_closed" if hold.state != HOLD_OPEN or (late and not by_writer) else None


def _closed_state(kind: str, by_writer: bool) -> str:
    if kind == "withdrawal_post":
        return "posted"
    return "expired" if by_writer else "voided"


def settlement_postings(bet: BetState, outcome: str) -> tuple[tuple[int, int], ...]:
    """won: escrow -S, house -(P-S), player +P; lost: escrow -S, house +S; void: refund."""
    stake = bet.stake
    if outcome == "won":
        paid = payout(stake, bet.odds)
        rows = ((ESCROW, -stake), (HOUSE, -(paid - stake)), (bet.user_id, paid))
    elif outcome == "lost":
        rows = ((ESCROW, -stake), (HOUSE, stake))
    elif outcome == "void":
        rows = ((ESCROW, -stake), (bet.user_id, stake))
    else:
        raise ValueError(f"unknown settlement outcome {outcome!r}")
    # floor(stake x odds) can equal the stake (stake 1 at 1.50): the house row is then 0,
    # and a ledger row of 0 is not a movement (the schema refuses it).
    return tuple(row for row in rows if row[1] != 0)


def _within_bounds(book: Book, postings: tuple[tuple[int, int], ...]) -> bool:
    balances = book.balances  # a plain loop: this runs for every intent
    for acc, amt in postings:
        if abs(balances.get(acc, 0) + amt) > BALANCE_ABS_MAX:
            return False
    return True


def _apply(book: Book, postings: tuple[tuple[int, int], ...]) -> None:
    balances = book.balances
    total = 0
    for _, amount in postings:  # checked before any balance changes
        total += amount
    require(total == 0, "postings must sum to zero")
    for account, amount in postings:
        balances[account] = after = balances.get(account, 0) + amount
        if account > 0 and after < 0:  # message built only on failure: runs per intent
            raise InvariantViolation(f"player {account} below zero")
