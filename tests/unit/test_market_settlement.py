"""The pure parts of resulting a market: ids, results per selection, the chunk's cursor."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from workers.core.decision import MARKET_CLOSED, MARKET_SETTLING, BetState
from workers.core.market_settlement import (
    SETTLE_ID_NAMESPACE,
    Settlement,
    chunk_candidates,
    chunk_change,
    settle_id,
)

SETTLEMENT = Settlement("final", "01a2536f-87ac-711d-8ea2-5dd93c2d5486",
                        {"home": "won", "draw": "void"}, "lost", through=0)


@given(st.uuids().map(str), st.uuids().map(str))
def test_a_settles_id_is_the_uuid5_of_its_settlement_and_bet(settlement: str, bet: str) -> None:
    """The same id whichever writer settles the bet: a second one is a repeat, not a pay."""
    assert settle_id(settlement, bet) == str(uuid.uuid5(SETTLE_ID_NAMESPACE,
                                                        f"{settlement}:{bet}"))


def _bets(*selections: str) -> list[BetState]:
    return [BetState(f"b{i}", 7, 100, "2.50", "open", seq=10 + i, market="final",
                     selection=sel) for i, sel in enumerate(selections)]


def test_each_bet_gets_its_selections_result_and_others_get_the_rest() -> None:
    cands = chunk_candidates(SETTLEMENT, _bets("home", "draw", "away", "home"), now_ms=5)
    assert [c.intent.outcome for c in cands] == ["won", "void", "lost", "won"]
    assert [c.intent.bet_id for c in cands] == ["b0", "b1", "b2", "b3"]
    assert all(c.entry_id.startswith("writer:") and c.kind == "settle" for c in cands)
    assert len({c.id for c in cands}) == 4 and len({c.entry_id for c in cands}) == 4


def test_a_full_chunk_moves_the_cursor_and_a_short_one_closes_the_market() -> None:
    full = chunk_change(SETTLEMENT, _bets("home", "away"), chunk_max=2)
    assert (full.state, full.settled_through) == (MARKET_SETTLING, 11)
    assert chunk_change(SETTLEMENT, _bets("home"), chunk_max=2).state == MARKET_CLOSED
    assert chunk_change(SETTLEMENT, [], chunk_max=2).state == MARKET_CLOSED
