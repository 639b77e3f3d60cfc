"""A reply from the admission child is checked before the writer decides on it: one that
does not give every entry read exactly once, in stream order, is refused (pure logic:
``workers/writer/admission.py``; the child itself is exercised in tests/integration)."""

from __future__ import annotations

import pytest

from producer.client import entry_fields
from producer.signing import Key, Keyring
from tests.conftest import KEYRING
from tests.support import plain_intents
from workers.adapters.intent_stream import Entry
from workers.writer.admission import Reply, merge, split

RING = Keyring({kid: Key(kid, spec["secret"].encode(), frozenset(spec["kinds"]))
                for kid, spec in KEYRING.items()})


def _damaged(fast: list, damage: str) -> list:
    fast = list(fast)
    if damage == "drop":
        del fast[-2]
    elif damage == "swap":
        fast[-2], fast[-1] = fast[-1], fast[-2]
    elif damage == "repeat":
        fast[-1] = fast[-2]
    elif damage == "extra":  # every entry in order, then one more
        fast.append(fast[0])
    else:  # "beyond": an index past the batch
        fast[-1] = (len(fast) + 5, *fast[-1][1:])
    return fast


def _signed_entries(n: int) -> list[Entry]:
    return [(f"{1_700_000_000_000 + i}-0", {k.encode(): v if isinstance(v, bytes) else
                                           v.encode() for k, v in entry_fields(key, body).items()})
            for i, (key, body) in enumerate(plain_intents(RING, n))]


@pytest.mark.parametrize("damage", ["drop", "swap", "repeat", "extra", "beyond"])
def test_a_reply_that_skips_or_reorders_entries_is_refused(damage: str) -> None:
    """A reply of fast candidates only (the one-pass path) that does not give every entry
    read exactly once, in stream order, is nonsense: the writer refuses it (the child is
    then replaced) instead of deciding a wrong batch."""
    reply, _ = split(_signed_entries(4), RING)
    assert len(merge(reply, RING)[1]) == 4, "the undamaged reply is taken"
    with pytest.raises(ValueError):
        merge(Reply(reply.ids, _damaged(reply.fast, damage), []), RING)


@pytest.mark.parametrize("damage", ["drop", "repeat", "extra", "beyond"])
def test_a_mixed_reply_that_skips_or_repeats_entries_is_refused(damage: str) -> None:
    """With one entry sent raw, candidates are placed by index: a reply that leaves an
    entry out, names one twice or names one outside the batch is refused all the same
    (a ValueError, which replaces the child, not an IndexError that stops the writer)."""
    entries = _signed_entries(4)
    reply, _ = split(entries, RING)
    mixed = Reply(reply.ids, reply.fast[1:], [(0, entries[0][1])])
    assert len(merge(mixed, RING)[1]) == 4, "the undamaged mixed reply is taken"
    with pytest.raises(ValueError):
        merge(Reply(reply.ids, _damaged(mixed.fast, damage), mixed.raw), RING)
