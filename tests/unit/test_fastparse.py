"""The fast hot-path parser accepts and rejects exactly what the pydantic models do."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.contract import encode_body, parse_intent
from producer.errors import ContractError
from producer.fastparse import FastBet, intent_fields, parse_intent_fast

UUIDS = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                  st.text(max_size=40), st.integers())
INTS = st.one_of(st.integers(-5, 5), st.integers(-(2**64), 2**64), st.booleans(),
                 st.floats(allow_nan=False), st.just(10.0), st.text(max_size=5), st.none())
TEXTS = st.one_of(st.text(max_size=70), st.sampled_from(["home", " a", "a ", "", "x" * 64,
                                                         "x" * 65, "é", "a\u2028b", "a\tb",
                                                         'say "hi"', "back\\slash", "a  b"]),
                  st.integers())
ODDS = st.one_of(st.sampled_from(["1.01", "1.00", "1000.00", "1000.01", "2.5", "2.50",
                                  "02.50", "2.505", "2.50\n", " 2.50", "0.99", "1e2", "2.",
                                  ".5", "1000", "9999.99"]),
                 st.from_regex(r"[0-9]{1,5}(\.[0-9]{0,3})?", fullmatch=True),
                 st.floats(1, 10), st.text(max_size=8))
FIELDS = {
    "id": UUIDS, "bet_id": UUIDS,
    "kind": st.one_of(st.sampled_from(["bet", "deposit", "withdrawal", "settle", "other"]),
                      st.lists(st.integers(), max_size=1), st.dictionaries(st.text(), st.none(),
                                                                           max_size=1)),
    "user_id": INTS, "amount": INTS, "issued_at": INTS,
    "nonce": st.one_of(st.text(min_size=14, max_size=66), st.integers()),
    "market": TEXTS, "selection": TEXTS, "odds": ODDS,
    "outcome": st.one_of(st.sampled_from(["won", "lost", "void", "draw", 1]),
                         st.lists(st.just("won"), max_size=1)),
}
VALID = {"id": "3f1c2a9e-5b7d-4c1e-9a0b-2f4e6d8c1a3b", "user_id": 7, "nonce": "n" * 20,
         "issued_at": 1_700_000_000_000}
SHAPES = [
    {**VALID, "kind": "deposit", "amount": 5},
    {**VALID, "kind": "withdrawal", "amount": 5},
    {**VALID, "kind": "bet", "amount": 5, "market": "final", "selection": "home", "odds": "2.50"},
    {**VALID, "kind": "settle", "bet_id": "3f1c2a9e-5b7d-4c1e-9a0b-2f4e6d8c1a3c",
     "outcome": "won"},
]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A valid body with some fields replaced, removed or added: near the boundary."""
    body = dict(draw(st.sampled_from(SHAPES)))
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3)):
        body[name] = draw(FIELDS[name])
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=1)):
        del body[name]
    style = draw(st.sampled_from(["compact", "spaced", "repeated", "escaped"]))
    if style == "compact":
        return encode_body(body)
    if style == "spaced":
        return json.dumps(body).encode()  # not compact, not sorted: also allowed
    return _respelled(draw, body, style)


def _respelled(draw: st.DrawFn, body: dict, style: str) -> bytes:
    """The same object written by hand: a key repeated (with the same or another value,
    spaced or not), or a key spelled with a unicode escape (same key, still valid)."""
    pairs = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in body.items()]
    if body and style == "repeated":
        name = draw(st.sampled_from(sorted(body)))
        value = draw(st.one_of(st.just(body[name]), FIELDS.get(name, st.none())))
        colon = draw(st.sampled_from([":", " :", ": "]))
        pairs.insert(draw(st.integers(0, len(pairs))), f"{json.dumps(name)}{colon}"
                     f"{json.dumps(value)}")
    elif body:
        name = draw(st.sampled_from(sorted(body)))
        pairs = [f'"\\u{ord(name[0]):04x}{name[1:]}":{json.dumps(body[name])}'
                 if p.startswith(json.dumps(name) + ":") else p for p in pairs]
    return ("{" + ",".join(pairs) + "}").encode()


def outcome(parse, body: bytes) -> object:
    try:
        return ("ok", intent_fields(parse(body)))
    except ContractError as exc:
        return ("error", exc.reason, str(exc))


@settings(max_examples=3000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_fast_and_pydantic_paths_agree(body: bytes) -> None:
    assert outcome(parse_intent_fast, body) == outcome(parse_intent, body)


@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_fast_and_pydantic_paths_agree_on_arbitrary_bytes(body: bytes) -> None:
    assert outcome(parse_intent_fast, body) == outcome(parse_intent, body)


def test_every_valid_shape_takes_the_fast_path() -> None:
    for shape in SHAPES:
        fast = parse_intent_fast(encode_body(shape))
        assert type(fast).__name__.startswith("Fast")
        assert intent_fields(fast) == intent_fields(parse_intent(encode_body(shape)))


def test_repeated_key_is_refused_even_with_the_same_value() -> None:
    """msgspec keeps the last value of a repeated key; the contract refuses the body."""
    good = encode_body(SHAPES[2])
    for extra in (b',"amount":5}', b',"amount":999}', b',"amount" :5}', b',"kind":"bet"}',
                  b',"\\u0061mount":7}'):
        body = good[:-1] + extra
        assert outcome(parse_intent_fast, body)[0] == "error"
        assert outcome(parse_intent_fast, body) == outcome(parse_intent, body)


def test_invalid_utf8_inside_a_string_is_a_contract_error_not_a_crash() -> None:
    """msgspec raises UnicodeDecodeError (not its own error) on an encoded surrogate; the
    torture tier's hostile bodies found it."""
    body = encode_body(SHAPES[2]).replace(b'"final"', b'"fi\xed\xa0\x80nal"')
    assert outcome(parse_intent_fast, body)[0] == "error"
    assert outcome(parse_intent_fast, body) == outcome(parse_intent, body)


def test_valid_text_outside_the_fast_alphabet_is_still_accepted() -> None:
    """Quotes, backslashes and non-ASCII are valid market names: the slow path takes them."""
    body = encode_body({**SHAPES[2], "market": 'Coupe "A" \\ é'})
    parsed = parse_intent_fast(body)
    assert not isinstance(parsed, FastBet)
    assert parsed.market == 'Coupe "A" \\ é'


def test_unhashable_kind_or_outcome_is_a_contract_error_not_a_crash() -> None:
    """A signed body with "kind": [] used to raise TypeError and crash-loop the writer."""
    for body in ({**SHAPES[0], "kind": []}, {**SHAPES[3], "outcome": ["won"]},
                 {**SHAPES[0], "kind": {"a": 1}}):
        raw = encode_body(body)
        assert outcome(parse_intent_fast, raw)[0] == "error"
