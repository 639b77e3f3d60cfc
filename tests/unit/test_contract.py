"""Wire contract v1 (producer/contract.py): strict intent models, exact odds, canonical bodies.

Everything here protects one promise: an intent either parses into exactly the value the
producer meant, or it is refused with a ContractError that names the offending field.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.contract import (
    AMOUNT_MAX,
    BODY_BYTES_MAX,
    ISSUED_AT_MAX,
    NONCE_LEN_MAX,
    NONCE_LEN_MIN,
    ODDS_MAX_X100,
    ODDS_MIN_X100,
    TEXT_LEN_MAX,
    USER_ID_MAX,
    BetIntent,
    DepositIntent,
    SettleIntent,
    WithdrawalIntent,
    encode_body,
    intent_body,
    is_canonical_uuid,
    new_bet,
    new_deposit,
    new_intent_id,
    new_nonce,
    new_settle,
    new_withdrawal,
    odds_x100,
    parse_intent,
)
from producer.errors import ContractError

FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

ID = "0b6f3c2e-8d4a-4f7e-9a1b-2c3d4e5f6a7b"
BET_ID = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
NONCE = "abcdef0123456789abcdef0123456789"

VALID: dict[str, dict[str, Any]] = {
    "bet": {"id": ID, "kind": "bet", "user_id": 7, "amount": 250, "market": "final",
            "selection": "home", "odds": "2.50", "nonce": NONCE, "issued_at": 1_700_000_000_000},
    "deposit": {"id": ID, "kind": "deposit", "user_id": 7, "amount": 1000, "nonce": NONCE,
                "issued_at": 1_700_000_000_000},
    "withdrawal": {"id": ID, "kind": "withdrawal", "user_id": 7, "amount": 1000,
                   "nonce": NONCE, "issued_at": 1_700_000_000_000},
    "settle": {"id": ID, "kind": "settle", "user_id": 7, "bet_id": BET_ID, "outcome": "won",
               "nonce": NONCE, "issued_at": 1_700_000_000_000},
}


def body(template: str = "bet", /, **changes: Any) -> bytes:
    """A valid body of ``template`` kind with some fields replaced (``...`` removes one)."""
    fields = {**VALID[template], **changes}
    return encode_body({k: v for k, v in fields.items() if v is not ...})


def refused(raw: bytes, *names: str, reason: str = "invalid") -> ContractError:
    """parse_intent must refuse ``raw`` with ``reason`` and a message naming ``names``."""
    with pytest.raises(ContractError) as info:
        parse_intent(raw)
    err = info.value
    assert err.reason == reason, str(err)
    for name in names:
        assert name in str(err), f"{name!r} not named in {str(err)!r}"
    return err


# --- valid intents ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID))
def test_each_valid_kind_parses_to_its_model(kind: str) -> None:
    """Every documented kind is accepted with exactly the documented fields."""
    model = {"bet": BetIntent, "deposit": DepositIntent, "withdrawal": WithdrawalIntent,
             "settle": SettleIntent}[kind]
    intent = parse_intent(body(kind))
    assert type(intent) is model
    assert intent.model_dump() == VALID[kind]


@pytest.mark.parametrize("odds", ["1.01", "1.1", "2", "2.5", "2.50", "999.99", "1000", "1000.00"])
def test_odds_inside_the_range_are_accepted(odds: str) -> None:
    """Odds from 1.01 to 1000.00 with up to two decimals are valid, in any of those spellings."""
    assert parse_intent(body(odds=odds)).odds == odds


def test_boundary_values_are_accepted() -> None:
    """The documented maxima are inclusive: amount, user id, issued_at, nonce and text lengths."""
    intent = parse_intent(body(amount=AMOUNT_MAX, user_id=USER_ID_MAX, issued_at=ISSUED_AT_MAX,
                               nonce="n" * NONCE_LEN_MAX, market="m" * TEXT_LEN_MAX,
                               selection="s"))
    assert intent.amount == AMOUNT_MAX and intent.user_id == USER_ID_MAX
    smallest = parse_intent(body(amount=1, user_id=1, issued_at=0, nonce="n" * NONCE_LEN_MIN))
    assert smallest.amount == 1


def test_inner_spaces_and_unicode_names_are_allowed() -> None:
    """Market and selection names may hold spaces and non-ASCII letters (shown to people)."""
    intent = parse_intent(body(market="Coupe de France — finale", selection="Olympique Lyonnais"))
    assert intent.market == "Coupe de France — finale"


def test_helper_constructors_build_valid_intents_with_fresh_ids_and_nonces() -> None:
    """new_* helpers produce contract-valid intents; ids and nonces are never reused."""
    a, b = new_deposit(1, 100), new_deposit(1, 100)
    assert a.id != b.id and a.nonce != b.nonce
    assert is_canonical_uuid(a.id)
    for intent in (a, new_withdrawal(2, 5), new_bet(3, 10, "m", "s", "1.01"),
                   new_settle(3, BET_ID, "void", intent_id=ID)):
        assert parse_intent(intent_body(intent)) == intent
    assert len(new_nonce()) == 32 and NONCE_LEN_MIN <= len(new_nonce()) <= NONCE_LEN_MAX


def test_new_intent_ids_are_canonical_uuid7_ordered_by_their_time() -> None:
    """Producers' ids are UUIDv7 (RFC 9562): canonical (so the writer accepts them), of
    version 7 and the RFC variant, carrying the ms they were made (the ledger's id index
    then grows at its end), and unique."""
    import time
    import uuid

    before = time.time_ns() // 1_000_000
    ids = [new_intent_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids[:200] + ids[-200:]:
        parsed = uuid.UUID(text)
        assert is_canonical_uuid(text) and str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after
    stamps = [uuid.UUID(t).int >> 80 for t in ids]
    assert stamps == sorted(stamps)  # made later, sorts later (by ms)
    assert len({uuid.UUID(t).int & ((1 << 62) - 1) for t in ids}) == len(ids)  # random bits


@pytest.mark.parametrize("build", [
    lambda: new_deposit(1, 10.0),
    lambda: new_deposit(1, True),
    lambda: new_withdrawal(0, 10),
    lambda: new_bet(1, 10, "m", "s", 2.5),
    lambda: new_bet(1, 10, "m", "s", "1.00"),
    lambda: new_settle(1, BET_ID.upper(), "won"),
    lambda: new_settle(1, BET_ID, "draw"),
])
def test_helper_constructors_refuse_invalid_values_before_signing(build) -> None:
    """A producer cannot even build an invalid intent (float money, bool, bad odds, bad ids)."""
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        build()


# --- refusals, one per rule ------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALID))
def test_unknown_fields_are_refused(kind: str) -> None:
    """Unknown fields are rejected, never ignored (they might carry meaning we'd drop)."""
    refused(body(kind, extra=1), "extra")
    refused(body(kind, payout=10**6), "payout")


@pytest.mark.parametrize("kind,field", [
    ("bet", "amount"), ("bet", "market"), ("bet", "selection"), ("bet", "odds"),
    ("bet", "nonce"), ("bet", "issued_at"), ("bet", "user_id"), ("bet", "id"),
    ("deposit", "amount"), ("withdrawal", "amount"), ("settle", "bet_id"),
    ("settle", "outcome"),
])
def test_missing_fields_are_refused(kind: str, field: str) -> None:
    """Every documented field is required for its kind."""
    refused(body(kind, **{field: ...}), field)


@pytest.mark.parametrize("field", ["amount", "market", "selection", "odds"])
def test_settle_refuses_bet_only_fields(field: str) -> None:
    """A settlement cannot carry a stake, odds or a payout of its own."""
    refused(body("settle", **{field: VALID["bet"][field]}), field)


@pytest.mark.parametrize("kind", ["", "Bet", "transfer", None, 1])
def test_unknown_or_missing_kind_is_refused(kind: Any) -> None:
    """kind selects the schema; anything but the four documented kinds is refused."""
    refused(body(kind=kind), "kind")
    refused(body(kind=...), "kind")


@pytest.mark.parametrize("value", [10.0, 10.5, "10", True, False, None, [10], {"v": 10}])
@pytest.mark.parametrize("field", ["amount", "user_id", "issued_at"])
def test_integers_must_be_json_integers(field: str, value: Any) -> None:
    """Money and ids are integers: floats (even 10.0), strings and bools are refused."""
    refused(body(**{field: value}), field)


@pytest.mark.parametrize("raw", [b"10.0", b"1e1", b"1E1", b"10e0", b"-0", b"NaN", b"Infinity",
                                 b"-Infinity", b"0x10", b"010", b"+10"])
def test_amount_refuses_every_non_integer_json_spelling(raw: bytes) -> None:
    """Exponents, NaN/Infinity, hex, leading zeros or signs never sneak in as an amount."""
    text = body().replace(b'"amount":250', b'"amount":' + raw)
    assert text != body()
    refused(text)


@pytest.mark.parametrize("amount", [0, -1, -(10**15), AMOUNT_MAX + 1, 2**63, 2**64, 10**40])
def test_amount_out_of_range_is_refused(amount: int) -> None:
    """Amounts are > 0 and at most AMOUNT_MAX minor units (no overflow, no negative money)."""
    for kind in ("bet", "deposit", "withdrawal"):
        refused(body(kind, amount=amount), "amount")


@pytest.mark.parametrize("user_id", [0, -1, USER_ID_MAX + 1, 2**64])
def test_user_id_out_of_range_is_refused(user_id: int) -> None:
    """User ids are positive and JSON-safe (ids <= 0 are system accounts, never users)."""
    refused(body(user_id=user_id), "user_id")


@pytest.mark.parametrize("issued_at", [-1, ISSUED_AT_MAX + 1])
def test_issued_at_out_of_range_is_refused(issued_at: int) -> None:
    """issued_at is a non-negative JSON-safe millisecond timestamp."""
    refused(body(issued_at=issued_at), "issued_at")


@pytest.mark.parametrize("odds", [
    "2.505", "1.001", "1.00", "1", "0.99", "0", "1000.01", "1001", "9999.99", "10000",
    "-2.50", "+2.50", "02.50", "2.", ".5", "2,50", " 2.50", "2.50 ", "1e2", "NaN", "Infinity",
    "", "two", "٢.50", "2.5\u0000",
])
def test_odds_outside_the_rules_are_refused(odds: str) -> None:
    """Odds: decimal string, <= 2 decimals, 1.01..1000.00, no other spellings."""
    refused(body(odds=odds), "odds")


def test_odds_with_a_trailing_newline_are_refused() -> None:
    """'2.50\\n' is not a decimal string; it must not be stored as a bet's odds."""
    refused(body(odds="2.50\n"), "odds")


@pytest.mark.parametrize("odds", [2.5, 250, True, None, ["2.50"]])
def test_odds_must_be_a_string(odds: Any) -> None:
    """Odds as a JSON number would invite float rounding: only strings are accepted."""
    refused(body(odds=odds), "odds")


@pytest.mark.parametrize("field", ["id", "bet_id"])
@pytest.mark.parametrize("value", [
    ID.upper(), ID.replace("-", ""), "{" + ID + "}", "urn:uuid:" + ID, ID + " ", ID[:-1],
    "not-a-uuid", "", 12345,
])
def test_ids_must_be_canonical_lowercase_uuids(field: str, value: Any) -> None:
    """An id is an idempotency key, so exactly one spelling is allowed (else a resend would
    count as a new intent)."""
    refused(body("settle", **{field: value}), field)
    assert not is_canonical_uuid(value) if isinstance(value, str) else True


@pytest.mark.parametrize("nonce", ["n" * (NONCE_LEN_MIN - 1), "n" * (NONCE_LEN_MAX + 1), "", 1234])
def test_nonce_length_is_enforced(nonce: Any) -> None:
    """Nonces are 16-64 characters: short ones are guessable, long ones waste Redis memory."""
    refused(body(nonce=nonce), "nonce")


@pytest.mark.parametrize("field", ["market", "selection"])
@pytest.mark.parametrize("value", [
    "", "a" * (TEXT_LEN_MAX + 1), "line\nbreak", "tab\there", "nul\x00", "bell\x07",
    "del\x7f", "c1\x85", "zero\u200bwidth", "rtl\u202eoverride", "bom\ufeff", "private\ue000",
    "unassigned\u0378", " leading", "trailing ", "\u00a0nbsp", 5, None,
])
def test_names_refuse_empty_long_control_and_format_characters(field: str, value: Any) -> None:
    """Market/selection names are shown to users: no control/format/invisible characters."""
    refused(body(**{field: value}), field)


@pytest.mark.parametrize("outcome", ["WON", "draw", "", None, 1])
def test_settle_outcome_is_one_of_won_lost_void(outcome: Any) -> None:
    """Only won/lost/void settle a bet; the payout is never supplied by the producer."""
    refused(body("settle", outcome=outcome), "outcome")


# --- malformed and hostile bodies ------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"not json", b"{", b'{"id":', b"\xff\xfe\x00", b"null", b"[]", b"1", b'"bet"',
    b"true", b"{}", b"\x00" * 10,
])
def test_non_object_or_non_json_bodies_are_refused(raw: bytes) -> None:
    """Anything that is not a JSON object is refused with a ContractError (never a crash)."""
    refused(raw)


@pytest.mark.parametrize("raw", [
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 600 + b"1" + b"}" * 600,
    body().replace(b'"amount":250', b'"amount":' + b"[" * 1500 + b"]" * 1500),
    body().replace(b'"market":"final"', b'"market":' + b'{"x":' * 500 + b"1" + b"}" * 500),
])
def test_deeply_nested_json_bombs_are_refused(raw: bytes) -> None:
    """Deep nesting under the size limit cannot exhaust the stack (no RecursionError)."""
    assert len(raw) <= BODY_BYTES_MAX
    refused(raw)


def test_huge_integer_literal_is_refused() -> None:
    """A 4000-digit amount is refused quickly instead of being converted or overflowing."""
    raw = body().replace(b'"amount":250', b'"amount":' + b"9" * 3500)
    assert len(raw) <= BODY_BYTES_MAX
    refused(raw, "amount")


def test_oversized_body_is_refused_as_too_large() -> None:
    """Bodies over BODY_BYTES_MAX are refused before parsing, with reason too_large."""
    raw = body()
    padded = raw[:-1] + b" " * (BODY_BYTES_MAX - len(raw)) + b"}"
    assert len(padded) == BODY_BYTES_MAX
    assert parse_intent(padded) == parse_intent(raw)  # exactly at the limit is fine
    err = refused(padded + b" ", reason="too_large")
    assert str(BODY_BYTES_MAX) in str(err)
    refused(b"[" * (BODY_BYTES_MAX * 10), reason="too_large")


def test_duplicate_keys_are_refused() -> None:
    """A signed body must have exactly one meaning for every consumer in every language."""
    refused(body().replace(b'"amount":250', b'"amount":1,"amount":250'), "amount")


@FAST
@given(st.binary(max_size=BODY_BYTES_MAX + 64))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    """Whatever bytes are in the stream, parsing yields an intent or a ContractError."""
    try:
        parse_intent(raw)
    except ContractError as err:
        assert err.reason in ("invalid", "too_large")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@FAST
@given(st.sampled_from(sorted(VALID)), st.sampled_from(["id", "user_id", "amount", "odds",
                                                         "market", "nonce", "issued_at",
                                                         "outcome", "bet_id"]), JSON_VALUES)
def test_random_field_values_are_accepted_only_when_valid(kind: str, field: str,
                                                          value: Any) -> None:
    """Any JSON value in any field either parses to exactly that value or is refused."""
    fields = {**VALID[kind], field: value}
    raw = json.dumps(fields, separators=(",", ":"), sort_keys=True, allow_nan=True).encode()
    try:
        intent = parse_intent(raw)
    except ContractError as err:
        assert err.reason in ("invalid", "too_large")
        return
    dumped = intent.model_dump()
    assert dumped == fields and type(dumped[field]) is type(value)


# --- canonical encoding and round trips ------------------------------------------------


def test_encode_body_is_compact_with_sorted_keys() -> None:
    """Producers emit compact JSON with sorted keys, UTF-8 (not \\u escapes)."""
    assert encode_body({"b": 1, "a": [1, 2], "c": {"z": 1, "y": "é"}}) == \
        '{"a":[1,2],"b":1,"c":{"y":"é","z":1}}'.encode()


@pytest.mark.parametrize("kind", sorted(VALID))
def test_intent_body_is_canonical(kind: str) -> None:
    """intent_body emits the contract's canonical bytes, so re-encoding is stable."""
    intent = parse_intent(body(kind))
    raw = intent_body(intent)
    assert b" " not in raw and b"\n" not in raw
    keys = list(json.loads(raw))
    assert keys == sorted(keys)
    assert raw == body(kind)
    assert intent_body(parse_intent(raw)) == raw


NAME_CHARS = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn"))
NAMES = st.text(NAME_CHARS, min_size=1, max_size=TEXT_LEN_MAX).filter(lambda s: s == s.strip())
ODDS_X100 = st.integers(ODDS_MIN_X100, ODDS_MAX_X100)
COMMON = dict(
    id=st.uuids().map(str), user_id=st.integers(1, USER_ID_MAX),
    nonce=st.text(min_size=NONCE_LEN_MIN, max_size=NONCE_LEN_MAX),
    issued_at=st.integers(0, ISSUED_AT_MAX),
)
AMOUNTS = st.integers(1, AMOUNT_MAX)
INTENTS = st.one_of(
    st.builds(DepositIntent, kind=st.just("deposit"), amount=AMOUNTS, **COMMON),
    st.builds(WithdrawalIntent, kind=st.just("withdrawal"), amount=AMOUNTS, **COMMON),
    st.builds(BetIntent, kind=st.just("bet"), amount=AMOUNTS, market=NAMES, selection=NAMES,
              odds=ODDS_X100.map(lambda x: f"{x // 100}.{x % 100:02d}"), **COMMON),
    st.builds(SettleIntent, kind=st.just("settle"), bet_id=st.uuids().map(str),
              outcome=st.sampled_from(["won", "lost", "void"]), **COMMON),
)


@FAST
@given(INTENTS)
def test_valid_intents_round_trip(intent) -> None:
    """parse_intent(intent_body(x)) == x for every valid intent: the writer sees what was signed."""
    raw = intent_body(intent)
    assert len(raw) <= BODY_BYTES_MAX
    assert parse_intent(raw) == intent
    assert intent_body(parse_intent(raw)) == raw


def test_odds_x100_is_exact_for_every_valid_two_decimal_odds() -> None:
    """Odds become exact integer hundredths (no float error) over the whole valid range."""
    for x in range(ODDS_MIN_X100, ODDS_MAX_X100 + 1):
        assert odds_x100(f"{x // 100}.{x % 100:02d}") == x


@pytest.mark.parametrize("odds,x100", [
    ("1.01", 101), ("1.1", 110), ("1.15", 115), ("2", 200), ("2.5", 250), ("2.55", 255),
    ("4.35", 435), ("8.20", 820), ("1000", 100_000), ("1000.00", 100_000),
])
def test_odds_x100_known_values(odds: str, x100: int) -> None:
    """Values where float(odds) * 100 would round wrong (1.15, 4.35, 8.20) are exact."""
    assert odds_x100(odds) == x100


def test_uuid4_from_the_standard_library_is_canonical() -> None:
    """str(uuid.uuid4()) is the one accepted spelling, so any language's lowercase UUID works."""
    value = str(uuid.uuid4())
    assert is_canonical_uuid(value) and not is_canonical_uuid(value.upper())


_JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
                         st.floats(allow_nan=False), st.lists(st.integers(), max_size=3))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.one_of(st.text(), st.integers()), _JSON_VALUES, max_size=10))
def test_encode_body_gives_the_bytes_json_dumps_gives(fields: dict[Any, Any]) -> None:
    """Compact, sorted keys, UTF-8 unescaped: the plain fast path (msgspec) and json.dumps
    agree byte for byte on every body, including keys and strings outside the BMP, control
    characters and huge ints; what the fast path cannot do (floats, lists, int keys) still
    goes through json.dumps. Both refuse a lone surrogate alike."""
    try:
        expected = json.dumps(fields, separators=(",", ":"), sort_keys=True,
                              ensure_ascii=False).encode()
    except (TypeError, UnicodeEncodeError) as exc:  # mixed str and int keys; surrogates
        with pytest.raises(type(exc)):
            encode_body(fields)
        return
    assert encode_body(fields) == expected
