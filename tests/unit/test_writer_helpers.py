"""Pure helpers of the writer's path, pinned where review found defects: a redelivery is
recognised by its stored entry and body, and multi-row statements are sliced in powers of
two (so SQLite compiles few distinct texts; tests/integration/test_store_statements.py
shows the effect on a real file)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.contract import new_deposit
from producer.errors import InvariantViolation
from workers.adapters.ledger_store import _chunks
from workers.core.batch_rows import OutcomeRow, Stored
from workers.core.decision import Candidate
from workers.core.repeats import split_repeats


def _cand(entry: str, intent) -> Candidate:
    return Candidate.of(entry, 1, intent, intent.id.encode(), "k")


def test_a_reused_entry_id_for_another_intent_is_not_a_redelivery() -> None:
    """After Redis lost data, an entry id can come back with another intent in it."""
    old = OutcomeRow(1, "11111111-1111-4111-8111-111111111111", "5-0", "deposit", 9,
                     "accepted", None, None, 10, b"old", 1, 1)
    new = _cand("5-0", new_deposit(9, 10))
    fresh, repeats = split_repeats([new], Stored({}, {"5-0": old}))
    assert fresh == [new] and repeats == []


@given(st.lists(st.integers(), max_size=300), st.sampled_from([1, 2, 8, 64, 256]))
def test_chunks_cover_the_items_in_order_in_powers_of_two(items: list[int], size: int) -> None:
    pieces = list(_chunks(items, size))
    assert [x for piece in pieces for x in piece] == items
    lengths = [len(piece) for piece in pieces]
    assert all(0 < n <= size and n & (n - 1) == 0 for n in lengths)
    # As few statements as power-of-two lengths allow: full ones, then one per bit of the rest.
    assert len(pieces) == len(items) // size + bin(len(items) % size).count("1")


def test_a_chunk_size_that_is_not_a_power_of_two_is_a_programmer_error() -> None:
    with pytest.raises(InvariantViolation):
        list(_chunks([1, 2, 3], 3))
