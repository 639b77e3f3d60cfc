"""The writer reads stream entries exactly as Redis stores them.

Regression: Redis keeps a field name given twice in one XADD (``... body B1 sig S1 body B2
sig S2``), and redis-py's reply parsing turns the field list into a dict where the last one
wins. The entry then looked like a contract-v1 entry with four fields and was applied from
its last body, while a consumer that keeps the first value reads another intent from the
same entry. The contract says each field exactly once: such an entry is ``malformed``.
"""

from __future__ import annotations

import redis

from producer import constants as c
from producer.client import entry_fields
from producer.contract import intent_body, new_deposit
from producer.signing import Keyring
from workers.adapters.intent_stream import IntentStream
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter, admit
from workers.settings import Settings


def xadd_pairs(client: redis.Redis, pairs: list[tuple[str, bytes | str]]) -> str:
    flat = [x for pair in pairs for x in pair]
    return client.execute_command("XADD", c.STREAM_INTENTS, "*", *flat).decode()


def test_a_field_given_twice_is_malformed_not_last_wins(
        redis_client: redis.Redis, settings: Settings, keyring: Keyring) -> None:
    stream = IntentStream(redis_client, settings, "t")
    stream.ensure_group()
    key = keyring.get("cashier")
    first, second = (entry_fields(key, intent_body(new_deposit(7, n))) for n in (1, 1_000_000))
    twice = xadd_pairs(redis_client, [*first.items(), ("body", second["body"]),
                                      ("sig", second["sig"])])
    plain = xadd_pairs(redis_client, list(second.items()))
    redis_client.set(c.KEY_WRITER_LEASE, "t")  # a writer reads only while it leads
    entries = dict(stream.read_new("t"))
    assert set(entries) == {twice, plain}
    dead = admit(twice, entries[twice], keyring)
    assert isinstance(dead, DeadLetter) and dead.reason == "malformed", dead
    assert "body" in dead.detail and "sig" in dead.detail
    ok = admit(plain, entries[plain], keyring)
    assert isinstance(ok, Candidate) and ok.pre_reason is None
    assert redis_client.xlen(c.STREAM_INTENTS) == 2  # the connection's other replies unchanged
    assert redis_client.xrange(c.STREAM_INTENTS)[1][1] == {k.encode(): v if isinstance(
        v, bytes) else v.encode() for k, v in second.items()}
