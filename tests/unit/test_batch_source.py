"""The order in which the writer's batches come: our pending entries before anything newer
after a failed read, nothing read ahead while they wait, and a batch read ahead first."""

from __future__ import annotations

import pytest
import redis

from producer.errors import InvariantViolation
from producer.signing import Keyring
from workers.core.decision import Candidate
from workers.core.intake import reject_replays
from workers.settings import load_settings
from workers.writer.batch_source import BatchSource


class FakeStream:
    """A stream of deleted entries (admitted as dead letters: no keys needed). ``pending``
    is what Redis holds under our consumer, ``new`` what no one has read yet."""

    consumer = "writer-test"

    def __init__(self, new: list[str]) -> None:
        self.new = list(new)
        self.pending: list[str] = []
        self.fail_next_read = False
        self.reads: list[str] = []

    def _deliver(self, count: int) -> list[tuple[str, None]]:
        taken, self.new = self.new[:count], self.new[count:]
        self.pending += taken
        return [(eid, None) for eid in taken]

    def read_new(self, lease_owner: str) -> list[tuple[str, None]]:
        self.reads.append("new")
        got = self._deliver(2)
        if self.fail_next_read:  # the read ran; its reply was lost
            self.fail_next_read = False
            raise redis.ConnectionError("reply lost")
        return got

    def read_new_now(self, lease_owner: str) -> list[tuple[str, None]]:
        self.reads.append("ahead")
        return self._deliver(2)

    def read_pending(self, after: str) -> list[tuple[str, None]]:
        self.reads.append(f"pending after {after}")
        return [(eid, None) for eid in self.pending if _after(eid, after)][:2]

    def claim_all(self, min_idle_ms: int = 0) -> int:
        return 0

    def claim_nonces(self, claims: list) -> list:
        return [None for _ in claims]


class Lease:
    owner = "writer-test:1"

    def keep(self) -> None: ...

    def keep_quietly(self) -> None: ...


def _after(entry_id: str, after: str) -> bool:
    return tuple(map(int, entry_id.split("-"))) > tuple(map(int, (after + "-0").split("-")[:2]))


def source(stream: FakeStream) -> BatchSource:
    s = load_settings(admission_process=False, read_ahead_size_min=1, batch_size_max=2)
    return BatchSource(s, stream, Lease(), Keyring({}))  # type: ignore[arg-type]


def ids(batch) -> list[str]:
    return [eid for eid, _ in batch.entries]


def test_after_taking_the_lead_our_pending_entries_come_first_then_new_ones() -> None:
    stream = FakeStream(["3-0", "4-0"])
    stream.pending = ["1-0", "2-0"]  # left by a crash
    src = source(stream)
    first = src.next()
    assert ids(first) == ["1-0", "2-0"] and first.rereads
    assert ids(src.next()) == ["3-0", "4-0"]


def test_after_a_failed_read_its_entries_are_read_again_before_anything_newer() -> None:
    stream = FakeStream([])
    src = source(stream)
    assert src.next() is None, "nothing pending or new: idle"
    stream.new = ["1-0", "2-0", "3-0", "4-0"]
    stream.fail_next_read = True
    with pytest.raises(redis.ConnectionError):
        src.next()
    again = src.next()
    assert ids(again) == ["1-0", "2-0"] and again.rereads, "the lost read's entries, first"


def test_nothing_is_read_ahead_while_our_pending_entries_wait() -> None:
    stream = FakeStream(["3-0", "4-0", "5-0", "6-0"])
    stream.pending = ["1-0", "2-0"]
    src = source(stream)
    batch = src.next()
    assert batch.rereads and not src.backlogged(batch)
    src.read_ahead()
    assert "ahead" not in stream.reads and not src.has_ahead


def test_a_batch_read_ahead_is_the_next_one_and_its_nonces_were_claimed_early() -> None:
    stream = FakeStream([])
    src = source(stream)
    assert src.next() is None, "nothing pending or new: idle"
    stream.new = ["1-0", "2-0", "3-0", "4-0"]
    first = src.next()
    assert src.backlogged(first)
    src.read_ahead()
    assert src.has_ahead
    second = src.next()
    assert ids(second) == ["3-0", "4-0"] and second.early is not None
    assert stream.reads.count("new") == 2, "one idle read, one read of the first batch; the second was read ahead"


def test_a_candidate_is_never_decided_without_a_claim_on_its_nonce() -> None:
    from types import SimpleNamespace
    cand = Candidate("1-0", 1, "a", "deposit", 1, b"", SimpleNamespace(nonce="n"),  # type: ignore[arg-type]
                     kid="cashier")
    with pytest.raises(InvariantViolation, match="without a claim"):
        reject_replays([cand], {})
