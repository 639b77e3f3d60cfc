"""Nonce claims started early (while the batch before commits, or in the admission child)
decide exactly what claims made at decision time would, and a failed early claim is made
again, not skipped."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import redis

from workers.core.decision import Candidate
from workers.core.intake import reject_replays
from workers.settings import load_settings
from workers.writer.nonce_claims import EarlyClaims, NonceClaimer

NOW_MS = 1_000  # the candidates below entered the stream and were issued then


class FakeStream:
    """Nonce records in a dict, as the claim script keeps them in Redis."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], str] = {}
        self.calls = 0

    def claim_nonces(self, claims: list[tuple[str, str, str]]) -> list[str | None]:
        self.calls += 1
        out = []
        for kid, nonce, intent_id in claims:
            holder = self.records.setdefault((kid, nonce), intent_id)
            out.append(None if holder == intent_id else holder)
        return out


def cand(intent_id: str, nonce: str) -> Candidate:
    intent = SimpleNamespace(nonce=nonce, issued_at=NOW_MS)
    return Candidate(f"1-{intent_id}", NOW_MS, intent_id, "deposit", 1, b"", intent,  # type: ignore
                     kid="cashier")


def checked(stream: FakeStream, batch: list[Candidate], early: EarlyClaims) -> list[Candidate]:
    """The batch with replays rejected, as the writer decides it: claims settled, then
    applied."""
    claimer = NonceClaimer(load_settings(), stream.claim_nonces, lambda: NOW_MS)
    return reject_replays(batch, claimer.settle(batch, early, NOW_MS))


def reasons(out: list[Candidate]) -> list[str | None]:
    return [c.pre_reason for c in out]


def test_early_claims_are_used_and_replays_still_refused() -> None:
    stream = FakeStream()
    batch = [cand("a", "n1"), cand("b", "n1"), cand("c", "n2")]
    early: Future = Future()
    early.set_result(dict(zip([x.entry_id for x in batch],
                              stream.claim_nonces([("cashier", x.intent.nonce, x.id)  # type: ignore
                                                   for x in batch]))))
    assert reasons(checked(stream, batch, early)) == [None, "replay", None]
    assert stream.calls == 1  # nothing claimed twice


def test_claims_the_admission_child_made_are_used_and_replays_still_refused() -> None:
    """The child hands its claims over done, by entry id (workers/writer/admission.py)."""
    stream = FakeStream()
    batch = [cand("a", "n1"), cand("b", "n1"), cand("c", "n2")]
    done = dict(zip([x.entry_id for x in batch],
                    stream.claim_nonces([("cashier", x.intent.nonce, x.id)  # type: ignore
                                         for x in batch])))
    assert reasons(checked(stream, batch, done)) == [None, "replay", None]
    assert stream.calls == 1  # nothing claimed twice


def test_failed_early_claims_are_made_at_decision_time() -> None:
    stream = FakeStream()
    stream.records[("cashier", "n1")] = "other"
    early: Future = Future()
    early.set_exception(redis.ConnectionError("Redis went away"))
    out = checked(stream, [cand("a", "n1"), cand("b", "n2")], early)
    assert reasons(out) == ["replay", None]
    assert stream.records[("cashier", "n2")] == "b"


def test_a_candidate_missing_from_the_early_claims_is_claimed() -> None:
    stream = FakeStream()
    stream.records[("cashier", "n9")] = "other"
    early: Future = Future()
    early.set_result({"1-a": None})
    out = checked(stream, [cand("a", "n1"), cand("z", "n9")], early)
    assert reasons(out) == [None, "replay"]
