"""Signed bodies of any JSON shape: ``admit`` classifies every one and never raises.

A signature only proves who sent the bytes, not that they are sane: a key holder can sign
``{"kind": []}`` (that once crashed the writer in a loop). Every field here takes any JSON
value — nested lists and objects, huge and negative numbers, floats, unicode — and the
result must be a Candidate with a reason or a DeadLetter.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer.client import entry_fields
from producer.signing import Keyring
from workers.core.decision import REASONS, Candidate
from workers.core.intake import DeadLetter, admit

RING = Keyring.from_mapping({
    "frontend": {"secret": "frontend-test-secret-0001", "kinds": ["bet"]},
    "cashier": {"secret": "cashier-test-secret-00001", "kinds": ["deposit", "withdrawal"]},
    "settlement": {"secret": "settlement-test-secret-01", "kinds": ["settle"]},
})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["bet", "deposit", "settle", "won", "2.50"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)
NAMES = st.sampled_from(["id", "kind", "user_id", "amount", "market", "selection", "odds",
                         "bet_id", "outcome", "nonce", "issued_at", "extra"])
BASE = {"id": "3f1c2a9e-5b7d-4c1e-9a0b-2f4e6d8c1a3b", "kind": "bet", "user_id": 7,
        "amount": 5, "market": "final", "selection": "home", "odds": "2.50",
        "nonce": "n" * 20, "issued_at": 1_700_000_000_000}


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    body = dict(BASE) if draw(st.booleans()) else {}
    for name in draw(st.lists(NAMES, max_size=5)):
        body[name] = draw(JSON)
    top = draw(st.sampled_from(["object", "object", "object", "list", "scalar"]))
    value = body if top == "object" else [body] if top == "list" else draw(JSON)
    return json.dumps(value).encode()


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(hostile(), st.sampled_from(["frontend", "cashier", "settlement"]))
def test_any_signed_json_is_classified_never_raised(body: bytes, kid: str) -> None:
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode()
              for k, v in entry_fields(RING.get(kid), body).items()}
    result = admit("1700000000000-0", fields, RING)
    if isinstance(result, DeadLetter):
        assert result.reason in {"malformed", "too_large"}
    else:
        assert isinstance(result, Candidate)
        assert result.pre_reason is None or result.pre_reason in REASONS
        if result.pre_reason is None:
            assert result.intent is not None and result.kind in RING.get(kid).kinds
