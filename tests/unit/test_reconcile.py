"""Reconciliation of producer journals against the ledger (pure) and the journal format."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.errors import JournalError
from producer.journal import Ack, Journal, read_journal
from workers.core.reconciliation import Recorded, reconcile


def ack(intent: str, ms: int, seq: int = 0, kind: str = "bet") -> Ack:
    return Ack(intent, f"{ms}-{seq}", kind, 7)


def test_every_acknowledged_intent_with_an_outcome_reconciles() -> None:
    acks = [ack("a", 1000), ack("b", 1001), ack("a", 1002)]  # "a" re-sent: one intent
    result = reconcile(acks, {"a": Recorded(1, 1), "b": Recorded(1, 0)})
    assert result.ok and result.intents == 2 and result.acknowledgements == 3
    assert result.with_outcome == 2 and result.lost == [] and result.lost_entry_ms is None


def test_acknowledged_without_outcome_is_lost_with_its_ingress_window() -> None:
    acks = [ack("kept", 1000), ack("x", 5000, 3), ack("y", 5400), ack("x", 5600)]
    result = reconcile(acks, {"kept": Recorded(1, 1)})
    assert not result.ok
    assert result.lost == ["x", "y"] and result.with_outcome == 1
    assert result.lost_entry_ms == (5000, 5600), "first and last acknowledgement of the lost"


def test_an_outcome_without_an_acknowledgement_is_not_lost() -> None:
    """The journal is written after the reply: a producer killed in between never claimed it."""
    result = reconcile([ack("a", 1)], {"a": Recorded(), "unjournaled": Recorded(1, 1)})
    assert result.ok and result.intents == 1


@pytest.mark.parametrize("recorded", [Recorded(2, 1), Recorded(1, 2), Recorded(2, 0)])
def test_two_outcomes_or_two_posting_batches_are_doubled(recorded: Recorded) -> None:
    result = reconcile([ack("a", 1)], {"a": recorded, "b": Recorded(1, 1)})
    assert result.doubled == ["a"] and not result.ok and result.lost == []


def test_doubled_is_found_even_for_intents_no_journal_mentions() -> None:
    assert reconcile([], {"z": Recorded(1, 2)}).doubled == ["z"]


def test_dead_lettered_entries_are_refused_not_lost() -> None:
    result = reconcile([ack("a", 1, 0), ack("b", 2, 0)], {}, dead_entries={"1-0"})
    assert result.dead_lettered == ["a"] and result.lost == ["b"]


def test_journal_round_trip_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "p.journal"
    with Journal(path) as journal:
        journal.record([ack("a", 10), ack("b", 11, 2, "deposit")])
    with open(path, "a") as f:
        f.write('{"id":"c","entry":"12-0","ki')  # the producer died mid-write
    acks, torn = read_journal(path)
    assert acks == [ack("a", 10), ack("b", 11, 2, "deposit")] and torn == 1


@pytest.mark.parametrize("text", ['not json\n{"id":"a","entry":"1-0","kind":"bet","user":1}\n',
                                  '{"id":"a","entry":"x-0","kind":"bet","user":1}\n',
                                  '{"id":"a","kind":"bet","user":1}\n'])
def test_a_corrupt_line_before_the_end_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.journal"
    path.write_text(text)
    with pytest.raises(JournalError, match="bad.journal:1"):
        read_journal(path)


def test_a_missing_journal_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="cannot read"):
        read_journal(tmp_path / "nope")
