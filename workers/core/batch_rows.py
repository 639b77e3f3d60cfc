"""Turn a batch of decisions into the rows one SQLite transaction writes. Pure.

Sequence numbers, ledger entry ids and the batch hash are assigned here from the store's
current heads, so the write itself is a handful of multi-row statements.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from producer.errors import InvariantViolation
from producer.invariants import require
from workers.core.decision import ACCEPTED, BetState, Candidate, Decision, MarketChange
from workers.core.hash_chain import LedgerRow, batch_hash


@dataclass(frozen=True, slots=True)
class Heads:
    """Where the ledger ends: the next write continues from here."""

    seq: int
    batch_no: int
    entry_id: int
    hash: str


# The fields of a confirmation (docs/wire-contract.md), in the order of OutcomeRow.message_row.
MESSAGE_FIELDS: Final = ("id", "kind", "user_id", "status", "reason", "balance", "seq",
                         "committed_at", "duplicate", "detail")


class OutcomeRow(msgspec.Struct, gc=False):  # never mutated; see workers/core/decision.py
    seq: int
    id: str
    entry_id: str
    kind: str
    user_id: int
    status: str
    reason: str | None
    detail: str | None
    balance: int | None
    body_sha: bytes
    batch_no: int
    committed_at: int

    def message_row(self, duplicate: bool = False) -> tuple:
        """The confirmation's values in :data:`MESSAGE_FIELDS` order: how the writer hands a
        batch to the confirmer, which publishes them as one object (a tuple costs the
        writer less to build, encode and compress)."""
        return (self.id, self.kind, self.user_id, self.status, self.reason, self.balance,
                self.seq, self.committed_at, duplicate, self.detail)


@dataclass(frozen=True, slots=True)
class Stored:
    """Outcomes already on disk for a batch: by intent id (first outcome) and by entry id."""

    by_id: dict[str, OutcomeRow]
    by_entry: dict[str, OutcomeRow]


@dataclass(frozen=True, slots=True)
class BatchWrite:
    epoch: int
    batch_no: int
    committed_at: int
    outcomes: list[OutcomeRow]
    ledger: list[LedgerRow]
    new_bets: list[tuple[int, str, int, str, str, str, int]]  # placed bets: status 'open'
    settled_bets: list[tuple[str, int, int]]  # (status, settled_seq, the bet's seq)
    # (account, delta, created_at) for every account the batch posts to, even when its
    # postings net to 0 (a new user who deposits and stakes it all still gets a row)
    balance_deltas: list[tuple[int, int, int]]
    prev_hash: str
    hash: str
    after: Heads  # the store's heads once this batch is committed
    # (change, seq of the outcome that made it), in order: the last one per market wins
    market_changes: list[tuple[MarketChange, int]] = field(default_factory=list)
    new_holds: list[tuple[str, int, int, int | None, int]] = field(default_factory=list)
    closed_holds: list[tuple[str, int, str]] = field(default_factory=list)  # (state, seq, id)


def build_batch(decisions: Sequence[Decision], heads: Heads, epoch: int, now: int,
                chunk: MarketChange | None = None) -> BatchWrite:
    """Rows for one transaction, built anew (the decisions are left as they are); checks
    that every transaction's postings sum to zero. ``chunk``: where a market settlement
    stands once this batch (which settles its next chunk) commits. (Names bound to locals:
    this loop runs for every intent of a batch.)"""
    batch_no = heads.batch_no + 1
    outcomes: list[OutcomeRow] = []
    ledger: list[LedgerRow] = []
    new_bets, settled = [], []
    placed: dict[str, int] = {}  # bets placed in this batch: their seq
    deltas: dict[int, int] = defaultdict(int)
    add_outcome, add_row = outcomes.append, ledger.append
    seq, entry_id = heads.seq, heads.entry_id
    contract_1_1 = False  # a market or hold decision in the batch (rare: rows of their own)
    for d in decisions:
        cand = d.candidate
        seq += 1
        add_outcome(OutcomeRow(seq, cand.id, cand.entry_id, cand.kind, cand.user_id, d.status,
                               d.reason, d.detail, d.balance, cand.body_sha, batch_no, now))
        postings = d.postings
        if not _posts(d):
            continue
        txn_id, kind = cand.id, cand.kind
        ref_id = d.ref or txn_id  # the bet a settle settles, the hold a post or void closes
        for account, amount in postings:
            entry_id += 1
            add_row((entry_id, txn_id, account, amount, kind, ref_id, now))
            deltas[account] += amount
        if d.new_bet:
            placed[d.new_bet.id] = seq  # a settle later in this batch refers to it by this
            new_bets.append(_bet_row(d.new_bet, cand, seq))
        elif d.settled_bet:
            bet_seq = d.settled_bet.seq if d.settled_bet.seq is not None else placed.get(
                d.settled_bet.id)
            require(bet_seq is not None, "a settled bet must have been placed")
            settled.append((d.settled_bet.status, seq, bet_seq))
        elif d.rare:
            contract_1_1 = True
    markets = _market_changes(decisions, outcomes, chunk, seq, contract_1_1)
    new_holds, closed_holds = _hold_rows(decisions, outcomes, contract_1_1)
    digest = batch_hash(heads.hash, ledger)
    after = Heads(seq, batch_no, entry_id, digest)
    return BatchWrite(
        epoch, batch_no, now, outcomes, ledger, new_bets, settled,
        [(acc, delta, now) for acc, delta in deltas.items()],  # 0 too: the account must exist
        heads.hash, digest, after, markets, new_holds, closed_holds,
    )


def _hold_rows(decisions: Sequence[Decision], outcomes: Sequence[OutcomeRow], any_decided: bool
               ) -> tuple[list[tuple[str, int, int, int | None, int]], list[tuple[str, int, str]]]:
    """Holds opened (id, user, amount, expires_at, seq) and closed (state, seq, id), looked
    for only when ``any_decided``."""
    opened: list[tuple[str, int, int, int | None, int]] = []
    closed: list[tuple[str, int, str]] = []
    for d, o in zip(decisions, outcomes) if any_decided else ():
        if d.new_hold is not None:
            h = d.new_hold
            opened.append((h.id, h.user_id, h.amount, h.expires_at, o.seq))
        if d.closed_hold is not None:
            closed.append((d.closed_hold.state, o.seq, d.closed_hold.id))
    return opened, closed


def _market_changes(decisions: Sequence[Decision], outcomes: Sequence[OutcomeRow],
                    chunk: MarketChange | None, last_seq: int,
                    any_decided: bool) -> list[tuple[MarketChange, int]]:
    """Each market change with the seq of the outcome that made it, in order (looked for
    only when ``any_decided``); a settlement chunk's cursor last, as of the batch's last
    outcome."""
    changes = [(d.market_change, o.seq) for d, o in zip(decisions, outcomes)
               if d.market_change is not None] if any_decided else []
    return changes + [(chunk, last_seq)] if chunk is not None else changes


def _posts(d: Decision) -> bool:
    """Whether the decision moves money; its postings must then sum to zero, and a
    rejection must post nothing (either breach is a bug: it stops the writer)."""
    if d.status != ACCEPTED:
        if d.postings:
            raise InvariantViolation("a rejected intent must not post")
        return False
    if sum(amount for _, amount in d.postings) != 0:
        raise InvariantViolation(f"txn {d.candidate.id} does not sum to zero")
    return True


def _bet_row(bet: BetState, cand: Candidate, seq: int) -> tuple[int, str, int, str, str, str,
                                                                  int]:
    intent = cand.intent
    return (seq, bet.id, bet.user_id, intent.market, intent.selection, bet.odds, bet.stake)
