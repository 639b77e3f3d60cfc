"""A market resulted as a whole (``settle_market``), settled in bounded chunks. Pure.

The ``settle_market`` intent itself only marks the market ``settling`` and records its
results. Each batch the writer commits afterwards (or, with nothing to read, a batch of
its own) settles the next chunk of the market's open bets, in bet order, as the writer's
own ``settle`` candidates, decided and written exactly like single settles, in the same
transaction as the chunk's cursor. So a chunk is wholly done or not at all, a killed
writer's successor goes on from the committed cursor, other intents wait at most one
chunk, and no bet is paid twice (a bet settles only while open) or forgotten (the market
closes only when a chunk finds none left).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import msgspec

from producer.fastparse import FastSettle
from workers.core.decision import (
    MARKET_CLOSED,
    MARKET_SETTLING,
    WRITER_ENTRY_PREFIX,
    BetState,
    Candidate,
    MarketChange,
)

WRITER_NONCE: Final = "writer-settlement"  # never claimed: the writer's own work
SETTLE_ID_PREFIX: Final = "settle:"


def settle_id(settlement_id: str, bet_id: str) -> str:
    """The id of the settle a settlement makes for a bet: the same whichever writer makes
    it, and never a UUID, so no intent from the stream (whose ids are UUIDs) can take it
    first and stop the settlement."""
    return f"{SETTLE_ID_PREFIX}{settlement_id}:{bet_id}"


class Settlement(msgspec.Struct, frozen=True):
    """A market being settled: the settle_market's id, results and others, the seq of its
    outcome (every bet on the market was placed before it), and the last bet seq settled
    so far."""

    market: str
    id: str
    results: dict[str, str]
    others: str
    seq: int
    through: int = 0

    @classmethod
    def of(cls, market: str, settlement_json: str, through: int,
           seq: int | None = None) -> Settlement:
        """From the stored record (which holds its seq) or, with ``seq``, a decision's."""
        record = msgspec.json.decode(settlement_json)
        return cls(market, record["id"], record["results"], record["others"],
                   record["seq"] if seq is None else seq, through)

    def result_of(self, bet: BetState) -> str:
        return self.results.get(bet.selection, self.others)


def chunk_candidates(settlement: Settlement, bets: Sequence[BetState],
                     now_ms: int) -> list[Candidate]:
    """One settle candidate per bet, in the order given (bet order)."""
    out = []
    for bet in bets:
        result = settlement.result_of(bet)
        intent_id = settle_id(settlement.id, bet.id)
        intent = FastSettle(id=intent_id, user_id=bet.user_id, nonce=WRITER_NONCE,
                            issued_at=now_ms, bet_id=bet.id, outcome=result)
        sha = hashlib.sha256(f"{settlement.id}:{bet.id}:{result}".encode()).digest()
        out.append(Candidate(f"{WRITER_ENTRY_PREFIX}{settlement.id}:{bet.seq}", now_ms,
                             intent_id, "settle", bet.user_id, sha, intent))
    return out


def chunk_change(settlement: Settlement, bets: Sequence[BetState],
                 chunk_max: int) -> MarketChange:
    """Where the market is once this chunk commits: still settling from its last bet on,
    or closed when the chunk was not full (no open bet was left after it)."""
    if len(bets) < chunk_max:
        return MarketChange(settlement.market, MARKET_CLOSED)
    last = bets[-1].seq
    return MarketChange(settlement.market, MARKET_SETTLING,
                        settled_through=last if last is not None else settlement.through)
