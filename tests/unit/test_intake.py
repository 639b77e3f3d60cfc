"""Authentication and classification of raw stream entries (workers/core/intake.py).

admit() decides whether an entry is somebody's intent (a Candidate that will get exactly one
outcome) or an unauthenticated/unidentifiable entry (a DeadLetter, never applied nor
confirmed). freshness_reason() bounds how old an accepted intent may be.
"""

from __future__ import annotations

import hashlib
import uuid

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer import constants as c
from producer.client import Producer
from producer.contract import (
    BODY_BYTES_MAX,
    DepositIntent,
    encode_body,
    intent_body,
    new_bet,
    new_deposit,
    new_settle,
    new_withdrawal,
)
from producer.fastparse import intent_fields
from producer.signing import Keyring, sign
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter, admit, freshness_reason, ingress_ms

FAST = settings(max_examples=200, deadline=None, database=None)

RING = Keyring.from_mapping({
    "frontend": {"secret": "frontend-test-secret-0001", "kinds": ["bet"]},
    "cashier": {"secret": "cashier-test-secret-00001", "kinds": ["deposit", "withdrawal"]},
    "settlement": {"secret": "settlement-test-secret-01", "kinds": ["settle"]},
})
KIND_KEY = {"bet": "frontend", "deposit": "cashier", "withdrawal": "cashier",
            "settle": "settlement"}
ENTRY = "1700000000123-7"
INGRESS = 1_700_000_000_123
ID = "0b6f3c2e-8d4a-4f7e-9a1b-2c3d4e5f6a7b"


def fields(body: bytes, kid: str = "frontend", sig: str | None = None,
           v: bytes = b"1") -> dict[bytes, bytes]:
    """Raw entry fields as redis-py returns them (bytes keys and values), correctly signed."""
    if sig is None:
        sig = sign(RING.get(kid), body) if kid in RING else "0" * 64
    return {b"v": v, b"kid": kid.encode(), b"body": body, b"sig": sig.encode()}


def dead(result: object, reason: str) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    assert result.reason == reason, result
    assert result.entry_id == ENTRY
    return result


def bet_body(**changes: object) -> bytes:
    raw = {"id": ID, "kind": "bet", "user_id": 7, "amount": 250, "market": "final",
           "selection": "home", "odds": "2.50", "nonce": "n" * 32, "issued_at": INGRESS}
    raw.update(changes)
    return encode_body(raw)


# --- valid entries ---------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: new_bet(7, 250, "final", "home", "2.50"),
    lambda: new_deposit(7, 1_000),
    lambda: new_withdrawal(7, 1),
    lambda: new_settle(7, ID, "lost"),
])
def test_valid_entry_becomes_a_candidate(build) -> None:
    """A correctly signed, valid intent is admitted with its identity, key and ingress time."""
    intent = build()
    body = intent_body(intent)
    kid = KIND_KEY[intent.kind]
    cand = admit(ENTRY, fields(body, kid), RING)
    assert isinstance(cand, Candidate)
    assert cand.pre_reason is None and cand.detail is None
    assert intent_fields(cand.intent) == intent_fields(intent)
    assert (cand.entry_id, cand.id, cand.kind, cand.user_id, cand.kid) == \
        (ENTRY, intent.id, intent.kind, intent.user_id, kid)
    assert cand.ingress_ms == INGRESS
    assert cand.body_sha == hashlib.sha256(body).digest()


def test_entries_written_by_the_producer_are_admitted() -> None:
    """What Producer.submit_many XADDs (read back as bytes, as the writer does) is admitted."""
    client = fakeredis.FakeRedis()
    intents = [new_deposit(1, 500), new_bet(1, 100, "m", "s", "3.00"),
               new_settle(1, str(uuid.uuid4()), "void"), new_withdrawal(1, 50)]
    ids = Producer(client, RING).submit_many(intents)
    entries = client.xrange(c.STREAM_INTENTS)
    assert [e[0].decode() for e in entries] == ids
    for (entry_id, raw), intent in zip(entries, intents):
        cand = admit(entry_id.decode(), raw, RING)
        assert isinstance(cand, Candidate) and cand.pre_reason is None
        assert intent_fields(cand.intent) == intent_fields(intent)
        assert cand.ingress_ms == ingress_ms(entry_id.decode())


def test_ingress_time_is_the_ms_part_of_the_entry_id() -> None:
    """The stream entry id <ms>-<seq> is the ingress clock used for freshness."""
    assert ingress_ms("1700000000123-0") == 1_700_000_000_123
    assert ingress_ms("5-18446744073709551615") == 5


# --- dead letters: not authenticated or not identifiable -----------------------------


@pytest.mark.parametrize("drop", [b"v", b"kid", b"body", b"sig"])
def test_missing_field_is_malformed(drop: bytes) -> None:
    """An entry without one of the four wire fields is dead-lettered as malformed."""
    raw = fields(bet_body())
    del raw[drop]
    letter = dead(admit(ENTRY, raw, RING), "malformed")
    assert drop.decode() in letter.detail


@pytest.mark.parametrize("extra", [{b"x": b"1"}, {b"V": b"1"}, {b"user_id": b"7"},
                                   {b"\xff": b""}])
def test_extra_field_is_malformed(extra: dict[bytes, bytes]) -> None:
    """Unknown entry fields are refused (the signature would not cover them)."""
    dead(admit(ENTRY, {**fields(bet_body()), **extra}, RING), "malformed")


def test_empty_entry_is_malformed() -> None:
    """An entry with no fields at all is dead-lettered, not a crash."""
    letter = dead(admit(ENTRY, {}, RING), "malformed")
    assert letter.kid is None


@pytest.mark.parametrize("version", [b"2", b"0", b"", b"01", b"1 ", b"v1", b"\xff"])
def test_other_wire_versions_are_unsupported(version: bytes) -> None:
    """Only wire version "1" is understood; anything else is parked, not guessed at."""
    letter = dead(admit(ENTRY, fields(bet_body(), v=version), RING), "unsupported_version")
    assert letter.kid == "frontend"


@pytest.mark.parametrize("kid", ["nobody", "FRONTEND", "frontend\x00"])
def test_unknown_kid_is_dead_lettered(kid: str) -> None:
    """A key id absent from the keyring is dead-lettered with reason unknown_kid."""
    letter = dead(admit(ENTRY, fields(bet_body(), kid=kid, sig="a" * 64), RING), "unknown_kid")
    assert letter.kid == kid


def test_non_utf8_kid_or_non_ascii_sig_is_malformed() -> None:
    """Undecodable framing fields are malformed (never an exception in the writer)."""
    raw = fields(bet_body())
    dead(admit(ENTRY, {**raw, b"kid": b"\xff\xfe"}, RING), "malformed")
    dead(admit(ENTRY, {**raw, b"sig": "é".encode() * 32}, RING), "malformed")


@pytest.mark.parametrize("sig", [
    lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"), lambda s: s.upper(), lambda s: s[:63],
    lambda s: "",
])
def test_bad_signature_is_dead_lettered(sig) -> None:
    """A forged or mangled signature is dead-lettered: the intent is never applied."""
    body = bet_body()
    good = sign(RING.get("frontend"), body)
    dead(admit(ENTRY, fields(body, sig=sig(good)), RING), "bad_signature")


def test_signature_by_another_known_key_is_dead_lettered() -> None:
    """A cashier signature presented under the front-end kid does not authenticate."""
    body = bet_body()
    dead(admit(ENTRY, fields(body, "frontend", sign(RING.get("cashier"), body)), RING),
         "bad_signature")


def test_body_over_the_limit_is_too_large_even_when_signed() -> None:
    """Oversized bodies are refused before any HMAC or JSON work (cheap to reject floods)."""
    body = bet_body(market="m" * 10)[:-1] + b" " * BODY_BYTES_MAX + b"}"
    dead(admit(ENTRY, fields(body), RING), "too_large")
    dead(admit(ENTRY, fields(body, kid="nobody"), RING), "too_large")
    limit = bet_body()[:-1] + b" " * (BODY_BYTES_MAX - len(bet_body())) + b"}"
    assert len(limit) == BODY_BYTES_MAX
    assert isinstance(admit(ENTRY, fields(limit), RING), Candidate)


@pytest.mark.parametrize("body", [
    b"not json", b"", b"[]", b"null", b"\xff\xfe", b"[" * 2000 + b"]" * 2000,
    b'{"":' * 800 + b"1" + b"}" * 800,
])
def test_signed_but_unparseable_body_is_malformed(body: bytes) -> None:
    """A signed body nobody can be identified from (non-JSON, JSON bomb) is dead-lettered."""
    assert len(body) <= BODY_BYTES_MAX
    letter = dead(admit(ENTRY, fields(body), RING), "malformed")
    assert letter.kid == "frontend"


@pytest.mark.parametrize("changes", [
    {"id": ID.upper()}, {"id": 5}, {"user_id": 0}, {"user_id": 7.0}, {"user_id": True},
    {"user_id": "7"}, {"kind": "transfer"}, {"kind": None},
])
def test_signed_invalid_body_without_usable_identity_is_malformed(changes: dict) -> None:
    """Without a canonical id, a known kind and a positive user id, nobody can be told."""
    dead(admit(ENTRY, fields(bet_body(**changes)), RING), "malformed")


@pytest.mark.parametrize("changes,field", [
    ({"amount": 250.0}, "amount"), ({"amount": 0}, "amount"), ({"odds": "2.505"}, "odds"),
    ({"market": ""}, "market"), ({"nonce": "short"}, "nonce"), ({"extra": 1}, "extra"),
    ({"issued_at": -1}, "issued_at"),
])
def test_signed_invalid_body_with_identity_gets_an_invalid_outcome(changes: dict,
                                                                   field: str) -> None:
    """The signer can be told their intent was invalid: a Candidate rejected as 'invalid'."""
    body = bet_body(**changes)
    cand = admit(ENTRY, fields(body), RING)
    assert isinstance(cand, Candidate), cand
    assert cand.pre_reason == "invalid" and cand.intent is None
    assert field in (cand.detail or "")
    assert (cand.id, cand.kind, cand.user_id, cand.kid, cand.ingress_ms) == \
        (ID, "bet", 7, "frontend", INGRESS)
    assert cand.body_sha == hashlib.sha256(body).digest()


@pytest.mark.parametrize("kid,intent", [
    ("frontend", new_deposit(7, 1_000_000)),
    ("frontend", new_withdrawal(7, 10)),
    ("frontend", new_settle(7, ID, "won")),
    ("cashier", new_bet(7, 10, "m", "s", "2.00")),
    ("settlement", new_deposit(7, 10)),
])
def test_key_signing_a_kind_it_may_not_is_forbidden(kid: str, intent) -> None:
    """A front-end key cannot mint money: its deposit gets outcome forbidden_kind."""
    cand = admit(ENTRY, fields(intent_body(intent), kid), RING)
    assert isinstance(cand, Candidate)
    assert cand.pre_reason == "forbidden_kind"
    assert intent_fields(cand.intent) == intent_fields(intent) and cand.kid == kid
    assert kid in (cand.detail or "") and intent.kind in (cand.detail or "")


FIELD_NAMES = st.sampled_from([b"v", b"kid", b"body", b"sig", b"x", b""])


@FAST
@given(st.dictionaries(FIELD_NAMES, st.binary(max_size=200), max_size=6),
       st.sampled_from([None, "frontend", "cashier"]))
def test_admit_never_raises(raw: dict[bytes, bytes], signer: str | None) -> None:
    """Whatever an entry holds, admit classifies it; the writer never crashes on input."""
    if signer and b"body" in raw:
        sig = sign(RING.get(signer), raw[b"body"])
        raw = {**raw, b"kid": signer.encode(), b"sig": sig.encode()}
    result = admit(ENTRY, raw, RING)
    assert isinstance(result, (Candidate, DeadLetter))
    if isinstance(result, DeadLetter):
        assert result.reason in ("malformed", "unsupported_version", "unknown_kid",
                                 "bad_signature", "too_large")


# --- freshness -------------------------------------------------------------------------

AGE, SKEW = 60_000, 5_000


def deposit_issued_at(issued_at: int) -> DepositIntent:
    return DepositIntent(id=ID, kind="deposit", user_id=1, amount=1, nonce="n" * 16,
                         issued_at=issued_at)


def test_fresh_intent_passes() -> None:
    """An intent signed just before ingress and processed promptly is fresh."""
    assert freshness_reason(deposit_issued_at(INGRESS - 10), INGRESS, INGRESS + 5, AGE, SKEW) \
        is None


def test_waited_too_long_in_the_stream_is_stale() -> None:
    """now - ingress > age max -> stale; exactly age max is still fresh."""
    intent = deposit_issued_at(INGRESS)
    assert freshness_reason(intent, INGRESS, INGRESS + AGE, AGE, SKEW) is None
    assert freshness_reason(intent, INGRESS, INGRESS + AGE + 1, AGE, SKEW) == "stale"


def test_signed_too_long_before_ingress_is_stale() -> None:
    """ingress - issued_at > age max -> stale (an old signed intent re-submitted later)."""
    assert freshness_reason(deposit_issued_at(INGRESS - AGE), INGRESS, INGRESS, AGE, SKEW) is None
    assert freshness_reason(deposit_issued_at(INGRESS - AGE - 1), INGRESS, INGRESS, AGE,
                            SKEW) == "stale"


def test_issued_too_far_in_the_future_is_stale() -> None:
    """issued_at - ingress > clock skew max -> stale; exactly the skew is tolerated."""
    assert freshness_reason(deposit_issued_at(INGRESS + SKEW), INGRESS, INGRESS, AGE, SKEW) is None
    assert freshness_reason(deposit_issued_at(INGRESS + SKEW + 1), INGRESS, INGRESS, AGE,
                            SKEW) == "stale"


@FAST
@given(st.integers(0, 2**45), st.integers(-10**6, 10**6), st.integers(-10**6, 10**6),
       st.integers(0, 10**6), st.integers(0, 10**5))
def test_freshness_matches_the_documented_rule(ingress: int, issued_off: int, waited: int,
                                               age: int, skew: int) -> None:
    """Stale exactly when waited > age, signed > age before ingress, or > skew after it."""
    issued = max(0, ingress + issued_off)
    now = ingress + waited
    expected = (now - ingress > age or ingress - issued > age or issued - ingress > skew)
    got = freshness_reason(deposit_issued_at(issued), ingress, now, age, skew)
    assert got == ("stale" if expected else None)


def test_a_key_signing_an_invalid_body_of_a_forbidden_kind_gets_forbidden_kind(keyring) -> None:
    """Authorisation is decided before validation: the owner hears forbidden_kind."""
    import json as _json

    from producer.client import entry_fields
    from producer.contract import encode_body

    body = encode_body({"id": "3f1c2a9e-5b7d-4c1e-9a0b-2f4e6d8c1a3b", "kind": "deposit",
                        "user_id": 5, "amount": 10.5, "nonce": "n" * 16, "issued_at": 1})
    fields = {k.encode(): (v if isinstance(v, bytes) else v.encode())
              for k, v in entry_fields(keyring.get("frontend"), body).items()}
    got = admit("1-0", fields, keyring)
    assert got.pre_reason == "forbidden_kind" and got.user_id == 5
    assert _json.loads(body)["kind"] == "deposit"


def test_a_front_end_key_can_sign_no_market_or_hold_kind() -> None:
    """forbidden_kind for every contract v1.1 kind signed with a key that lists only bet."""
    from producer.contract import (
        intent_body,
        new_resume_market,
        new_settle_market,
        new_suspend_market,
        new_withdrawal_hold,
        new_withdrawal_post,
        new_withdrawal_void,
    )

    hold_id = str(uuid.uuid4())
    for intent in (new_suspend_market("final"), new_resume_market("final"),
                   new_settle_market("final", {"home": "won"}), new_withdrawal_hold(5, 100, 60),
                   new_withdrawal_post(5, hold_id), new_withdrawal_void(5, hold_id)):
        got = admit(ENTRY, fields(intent_body(intent)), RING)
        assert isinstance(got, Candidate), (intent.kind, got)
        assert (got.kind, got.pre_reason) == (intent.kind, "forbidden_kind")
