"""Confirmation jobs are plain JSON whichever side wrote them (never pickle, rq #2389)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from rq.serializers import JSONSerializer

from workers.jobjson import JobJSON

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(_JSON)
def test_job_json_and_rq_json_read_each_other(value: object) -> None:
    # A writer on this version and a confirmer on the previous one (or the reverse)
    # during a rolling upgrade must read each other's jobs.
    assert json.loads(JobJSON.dumps(value)) == value
    assert JSONSerializer.loads(JobJSON.dumps(value)) == value
    assert JobJSON.loads(JSONSerializer.dumps(value)) == value


def test_a_confirmation_job_round_trips() -> None:
    message = {"id": "0b6c2d1e-8f3a-4c5b-9d7e-1a2b3c4d5e6f", "kind": "bet", "user_id": 7,
               "status": "accepted", "reason": None, "balance": 900, "seq": 12,
               "committed_at": 1_764_000_000_000, "duplicate": False, "detail": None}
    args = [[message], [1_764_000_000_000], {"stream_len_max": 100}]
    assert JSONSerializer.loads(JobJSON.dumps(args)) == args
