"""Batch rows, the tamper-evident hash chain and retry backoff (workers/core/batch_rows.py, chain.py,
backoff.py).

build_batch turns decisions into exactly the rows one SQLite transaction writes: outcome
sequence numbers and ledger entry ids continue from the store's heads without gaps, the
batch hash links to the previous batch, and balance deltas keep the books balanced.
"""

from __future__ import annotations

import hashlib
import random
import uuid

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.backoff import backoff_ms
from producer.contract import BetIntent, DepositIntent, SettleIntent
from producer.errors import InvariantViolation
from tests.support import candidate
from workers.core.batch_rows import MESSAGE_FIELDS, BatchWrite, Heads, build_batch
from workers.core.decision import (
    ACCEPTED,
    CASH,
    ESCROW,
    HOUSE,
    REJECTED,
    Book,
    Candidate,
    Decision,
    decide_batch,
)
from workers.core.hash_chain import GENESIS_HASH, batch_hash

FAST = settings(max_examples=200, deadline=None, database=None)
NOW, EPOCH = 1_700_000_000_000, 3
HEADS = Heads(seq=41, batch_no=6, entry_id=100, hash="ab" * 32)


def uid(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def dep(user: int, amount: int, n: int) -> Candidate:
    return candidate(DepositIntent(id=uid(n), kind="deposit", user_id=user, amount=amount,
                              nonce="n" * 16, issued_at=1), n)


def bet(user: int, amount: int, odds: str, n: int) -> Candidate:
    return candidate(BetIntent(id=uid(n), kind="bet", user_id=user, amount=amount, market="final",
                          selection="home", odds=odds, nonce="n" * 16, issued_at=1), n)


def settle(user: int, bet_n: int, outcome: str, n: int) -> Candidate:
    return candidate(SettleIntent(id=uid(n), kind="settle", user_id=user, bet_id=uid(bet_n),
                             outcome=outcome, nonce="n" * 16, issued_at=1), n)


def mixed_decisions() -> list[Decision]:
    """deposit, bet, rejected bet, won settle of the bet, unknown user, pre-rejected."""
    book = Book({CASH: 0, HOUSE: 0, ESCROW: 0})
    decisions, _ = decide_batch([
        dep(7, 1000, 1),
        bet(7, 250, "2.50", 2),
        bet(7, 5000, "2.00", 3),  # insufficient_funds
        settle(7, 2, "won", 4),
        bet(8, 10, "2.00", 5),  # unknown_user
        dep(7, 5, 6).rejected_early("stale", "too old"),
    ], book)
    return decisions


@pytest.fixture
def write() -> BatchWrite:
    return build_batch(mixed_decisions(), HEADS, EPOCH, NOW)


def test_outcomes_get_consecutive_seqs_after_the_heads(write: BatchWrite) -> None:
    """Every intent (accepted or rejected) gets the next sequence number, in stream order."""
    assert [o.seq for o in write.outcomes] == list(range(42, 48))
    assert [o.entry_id for o in write.outcomes] == [f"{n}-0" for n in range(1, 7)]
    assert [(o.status, o.reason) for o in write.outcomes] == [
        (ACCEPTED, None), (ACCEPTED, None), (REJECTED, "insufficient_funds"), (ACCEPTED, None),
        (REJECTED, "unknown_user"), (REJECTED, "stale")]
    assert [o.balance for o in write.outcomes] == [1000, 750, 750, 1375, None, 1375]
    assert {o.batch_no for o in write.outcomes} == {7}
    assert {o.committed_at for o in write.outcomes} == {NOW}
    assert write.outcomes[5].detail == "too old"
    assert (write.epoch, write.batch_no, write.committed_at) == (EPOCH, 7, NOW)


def test_ledger_rows_continue_the_entry_ids_and_follow_double_entry(write: BatchWrite) -> None:
    """Ledger rows: gap-free entry ids, one row per posting, settlement rows refer to the bet."""
    assert write.ledger == [
        (101, uid(1), CASH, -1000, "deposit", uid(1), NOW),
        (102, uid(1), 7, 1000, "deposit", uid(1), NOW),
        (103, uid(2), 7, -250, "bet", uid(2), NOW),
        (104, uid(2), ESCROW, 250, "bet", uid(2), NOW),
        (105, uid(4), ESCROW, -250, "settle", uid(2), NOW),
        (106, uid(4), HOUSE, -375, "settle", uid(2), NOW),
        (107, uid(4), 7, 625, "settle", uid(2), NOW),
    ]
    by_txn: dict[str, int] = {}
    for row in write.ledger:
        by_txn[row[1]] = by_txn.get(row[1], 0) + row[3]
    assert set(by_txn.values()) == {0}


def test_bet_rows_open_then_settle_in_the_same_batch(write: BatchWrite) -> None:
    """A bet placed and settled in one batch is inserted 'open' (keyed by the seq that placed
    it) and then marked settled by that seq."""
    assert write.new_bets == [(43, uid(2), 7, "final", "home", "2.50", 250)]
    assert write.settled_bets == [("won", 45, 43)]


def test_balance_deltas_sum_to_zero_and_match_the_postings(write: BatchWrite) -> None:
    """Per-account deltas are the sums of the ledger rows; together they sum to zero."""
    deltas = {acc: d for acc, d, _ in write.balance_deltas}
    assert deltas == {CASH: -1000, 7: 1375, HOUSE: -375, ESCROW: 0}  # 0: still listed
    assert sum(deltas.values()) == 0
    assert {t for _, _, t in write.balance_deltas} == {NOW}


def test_batch_hash_chains_to_the_previous_batch(write: BatchWrite) -> None:
    """The batch hash covers the previous hash and every ledger row (tamper evidence)."""
    assert write.prev_hash == HEADS.hash
    assert write.hash == batch_hash(HEADS.hash, write.ledger)
    assert write.after == Heads(47, 7, 107, write.hash)


def test_heads_advance_even_when_every_intent_is_rejected() -> None:
    """An all-rejected batch stores outcomes and a chained hash, but no ledger rows."""
    book = Book({CASH: 0, HOUSE: 0, ESCROW: 0})
    decisions, _ = decide_batch([bet(9, 10, "2.00", 1), settle(9, 77, "won", 2)], book)
    assert [d.status for d in decisions] == [REJECTED, REJECTED]
    w = build_batch(decisions, HEADS, EPOCH, NOW)
    assert w.ledger == [] and w.balance_deltas == [] and w.new_bets == [] and w.settled_bets == []
    assert w.hash == hashlib.sha256(HEADS.hash.encode()).hexdigest()
    assert w.after == Heads(HEADS.seq + 2, HEADS.batch_no + 1, HEADS.entry_id, w.hash)


def test_consecutive_batches_form_a_chain() -> None:
    """Feeding each batch's `after` into the next one yields gap-free seqs, ids and hashes."""
    heads = Heads(0, 0, 0, GENESIS_HASH)
    book = Book({CASH: 0, HOUSE: 0, ESCROW: 0})
    batches = [[dep(1, 100, 1), dep(2, 50, 2)], [bet(1, 10, "3.00", 3)],
               [bet(5, 1, "2.00", 4)], [settle(1, 3, "lost", 5), dep(1, 1, 6)]]
    seqs, entries, prev = [], [], GENESIS_HASH
    for n, cands in enumerate(batches, start=1):
        decisions, book = decide_batch(cands, book)
        w = build_batch(decisions, heads, EPOCH, NOW + n)
        assert w.prev_hash == prev and w.batch_no == n
        seqs += [o.seq for o in w.outcomes]
        entries += [r[0] for r in w.ledger]
        heads, prev = w.after, w.hash
        for seq, bet_id, *_ in w.new_bets:  # as the store would load them: placed at seq
            book.bets[bet_id] = msgspec.structs.replace(book.bets[bet_id], seq=seq)
    assert seqs == list(range(1, 7))
    assert entries == list(range(1, len(entries) + 1)) and len(entries) == 10
    assert heads.seq == 6 and heads.entry_id == 10 and heads.batch_no == 4


def test_a_rejected_decision_with_postings_is_an_invariant_violation() -> None:
    """A rejected intent must never move money; build_batch refuses to write one that would."""
    c = dep(7, 10, 1)
    bad = Decision(c, REJECTED, "insufficient_funds", 0, ((CASH, -10), (7, 10)))
    with pytest.raises(InvariantViolation):
        build_batch([bad], HEADS, EPOCH, NOW)


def test_unbalanced_postings_are_an_invariant_violation() -> None:
    """An accepted transaction whose rows do not sum to zero is never written."""
    c = dep(7, 10, 1)
    bad = Decision(c, ACCEPTED, None, 10, ((CASH, -10), (7, 11)))
    with pytest.raises(InvariantViolation, match=uid(1)):
        build_batch([bad], HEADS, EPOCH, NOW)


def test_outcome_message_carries_the_wire_fields(write: BatchWrite) -> None:
    """Confirmations carry id, kind, user_id, status, reason, balance, seq, committed_at."""
    msg = dict(zip(MESSAGE_FIELDS, write.outcomes[2].message_row(duplicate=True)))
    assert msg == {"id": uid(3), "kind": "bet", "user_id": 7, "status": REJECTED,
                   "reason": "insufficient_funds", "balance": 750, "seq": 44,
                   "committed_at": NOW, "duplicate": True, "detail": None}
    assert dict(zip(MESSAGE_FIELDS, write.outcomes[0].message_row()))["duplicate"] is False


# --- the hash chain ------------------------------------------------------------------------

ROWS = st.lists(st.tuples(st.integers(1, 10**9), st.uuids().map(str), st.integers(-2, 10**6),
                          st.integers(-10**15, 10**15),
                          st.sampled_from(["deposit", "withdrawal", "bet", "settle"]),
                          st.uuids().map(str), st.integers(0, 2**53)), max_size=8)


def reference_hash(prev: str, rows: list[tuple]) -> str:
    """The documented serialisation: prev hash, then one tab-separated line per row."""
    text = prev + "".join("\t".join(map(str, row)) + "\n" for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


@FAST
@given(st.text("0123456789abcdef", min_size=64, max_size=64), ROWS)
def test_batch_hash_matches_the_documented_serialisation(prev: str, rows: list[tuple]) -> None:
    """Anyone can recompute the chain from the rows (e.g. the audit, or a sqlite3 script)."""
    digest = batch_hash(prev, rows)
    assert digest == reference_hash(prev, rows)
    assert len(digest) == 64 and digest == digest.lower()


@FAST
@given(ROWS.filter(bool), st.data())
def test_any_change_to_a_row_changes_the_hash(rows: list[tuple], data: st.DataObject) -> None:
    """Editing any field of any ledger row, dropping or reordering rows breaks the chain."""
    digest = batch_hash(GENESIS_HASH, rows)
    i = data.draw(st.integers(0, len(rows) - 1))
    j = data.draw(st.integers(0, 6))
    row = list(rows[i])
    row[j] = row[j] + 1 if isinstance(row[j], int) else row[j] + "x"
    edited = [*rows[:i], tuple(row), *rows[i + 1:]]
    assert batch_hash(GENESIS_HASH, edited) != digest
    assert batch_hash(GENESIS_HASH, rows[:-1]) != digest
    if len(set(rows)) > 1:
        assert batch_hash(GENESIS_HASH, list(reversed(rows))) != digest or rows == rows[::-1]
    assert batch_hash("f" * 64, rows) != digest


# --- backoff -----------------------------------------------------------------------------


class Highest:
    """An rng stub that always picks the top of the allowed range (the ceiling)."""

    def randint(self, a: int, b: int) -> int:
        assert a <= b
        return b


class Lowest:
    def randint(self, a: int, b: int) -> int:
        assert a <= b
        return a


@FAST
@given(st.integers(-5, 10**6), st.integers(1, 10_000), st.integers(0, 10**6), st.integers())
def test_backoff_stays_within_min_and_max(attempt: int, low: int, extra: int, seed: int) -> None:
    """Retries never wait less than min nor more than max, for any attempt number."""
    high = low + extra
    delay = backoff_ms(attempt, low, high, random.Random(seed))
    assert low <= delay <= high
    assert delay <= low * 2 ** max(attempt - 1, 0)


def test_backoff_ceiling_doubles_until_the_maximum() -> None:
    """The ceiling grows 50, 100, 200, ... and then stays at max: pressure eases off quickly."""
    ceilings = [backoff_ms(n, 50, 5_000, Highest()) for n in range(1, 12)]
    assert ceilings == [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
    assert all(a <= b for a, b in zip(ceilings, ceilings[1:]))
    assert {backoff_ms(n, 50, 5_000, Lowest()) for n in range(1, 12)} == {50}


def test_first_attempt_waits_exactly_min() -> None:
    """Attempt 1 (and nonsense attempts <= 0) wait exactly min: no jitter range yet."""
    for attempt in (-3, 0, 1):
        assert backoff_ms(attempt, 50, 5_000, Highest()) == 50


def test_huge_attempt_numbers_do_not_overflow_or_stall() -> None:
    """A writer retrying for days still computes a bounded delay instantly."""
    assert backoff_ms(10**12, 50, 5_000, Highest()) == 5_000
    assert 50 <= backoff_ms(10**12, 50, 5_000) <= 5_000  # default random source


def test_backoff_jitter_spreads_retries() -> None:
    """Full jitter: many writers retrying at once do not all wake at the same moment."""
    rng = random.Random(1)
    delays = {backoff_ms(8, 50, 5_000, rng) for _ in range(200)}
    assert len(delays) > 50
    assert min(delays) < 1_000 < max(delays)


def test_a_ledger_row_of_another_width_is_refused_not_hashed() -> None:
    """The lines are formatted in one pass over every field: a row with a field too many
    or too few would shift the rest instead of failing, so it is refused."""
    row = (101, str(uuid.UUID(int=1)), 7, -5, "bet", str(uuid.UUID(int=1)), NOW)
    with pytest.raises(InvariantViolation):
        batch_hash(GENESIS_HASH, [row, row[:-1]])
    with pytest.raises(InvariantViolation):
        batch_hash(GENESIS_HASH, [(*row, 1)])
