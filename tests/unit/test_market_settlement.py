"""The pure parts of resulting a market: ids, results per selection, the chunk's cursor."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from producer.contract import is_canonical_uuid
from workers.core.decision import MARKET_CLOSED, MARKET_SETTLING, BetState
from workers.core.market_settlement import (
    Settlement,
    chunk_candidates,
    chunk_change,
    settle_id,
)

SETTLEMENT = Settlement("final", "01a2536f-87ac-711d-8ea2-5dd93c2d5486",
                        {"home": "won", "draw": "void"}, "lost", seq=100, through=0)


@given(st.uuids().map(str), st.uuids().map(str))
def test_a_settles_id_is_its_own_and_never_one_the_stream_can_bring(settlement: str,
                                                                    bet: str) -> None:
    """The same id whichever writer settles the bet, and no UUID: an intent from the stream
    (ids are canonical UUIDs) cannot take it first and stop the settlement."""
    made = settle_id(settlement, bet)
    assert made == settle_id(settlement, bet) and not is_canonical_uuid(made)
    assert made != settle_id(settlement, str(uuid.uuid4()))


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


def test_a_settle_market_too_big_for_the_stream_is_refused_before_it_is_signed() -> None:
    """64 results with 64-character selections would be dead-lettered too_large."""
    import pytest

    from producer.contract import new_settle_market
    from producer.errors import ContractError

    long = {f"{i:02d}" + "x" * 62: "won" for i in range(64)}
    with pytest.raises(ContractError, match="over 4096"):
        new_settle_market("final", long)
    assert new_settle_market("final", dict(list(long.items())[:20])).results
