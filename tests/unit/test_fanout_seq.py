"""The gateway reads a confirmation's seq without parsing it whole: the same number the
JSON says, whatever the other fields hold."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from workers.core.batch_rows import MESSAGE_FIELDS
from workers.gateway.fanout import seq_of

text = st.text(max_size=40)


@given(st.integers(1, 2**62), text, text, st.none() | text, st.booleans())
def test_the_seq_read_is_the_seq_in_the_message(seq: int, intent_id: str, reason: str,
                                                detail: str | None, compact: bool) -> None:
    values = (intent_id, "bet", 7, "rejected", reason, None, seq, 1, False, detail)
    message = dict(zip(MESSAGE_FIELDS, values, strict=True))
    raw = json.dumps(message, separators=(",", ":")) if compact else json.dumps(message)
    assert seq_of(raw) == seq
