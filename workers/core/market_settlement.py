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
import uuid
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

# Ids of the settles a settlement makes: the same for a bet whichever writer makes it.
SETTLE_ID_NAMESPACE: Final = uuid.UUID("6b1d6a4e-7c1a-4f0e-9a57-5b2f3d0c8e11")
_VARIANT: Final = {d: "89ab"[int(d, 16) & 0b11] for d in "0123456789abcdef"}  # RFC 9562


def writer_intent_id(name: str) -> str:
    """``uuid5(SETTLE_ID_NAMESPACE, name)`` as text, built from the SHA-1 directly
    (``uuid.uuid5`` cost ~11 us a bet, a tenth of settling it): the id of an intent the
    writer makes itself, the same whichever writer makes it."""
    h = hashlib.sha1(SETTLE_ID_NAMESPACE.bytes + name.encode(),
                     usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def settle_id(settlement_id: str, bet_id: str) -> str:
    return writer_intent_id(f"{settlement_id}:{bet_id}")
WRITER_NONCE: Final = "writer-settlement"  # never claimed: the writer's own work


class Settlement(msgspec.Struct, frozen=True):
    """A market being settled: the settle_market's id, results and others, and the last
    bet seq settled so far."""

    market: str
    id: str
    results: dict[str, str]
    others: str
    through: int = 0

    @classmethod
    def of(cls, market: str, settlement_json: str, through: int) -> Settlement:
        record = msgspec.json.decode(settlement_json)
        return cls(market, record["id"], record["results"], record["others"], through)

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
