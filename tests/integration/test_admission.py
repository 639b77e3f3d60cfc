"""The admission child reads and admits as the writer would, and failing costs no entry.

It reads batches ahead as the writer's own consumer and admits them on the other core
(workers/writer/admission.py). What the writer gets back must be exactly what it would have
admitted itself, for every kind of entry, and a child that dies must leave the writer
with a way on (it reads in process, a new child is started).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import msgspec
import pytest
import redis

from producer import constants as c
from producer.client import entry_fields
from producer.contract import encode_body, intent_body, new_bet, new_deposit, new_nonce
from producer.errors import LeaseLost
from producer.signing import Key, Keyring
from tests.support import plain_intents
from workers.adapters.intent_stream import IntentStream, _fields
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter, admit_entry
from workers.settings import Settings, load_settings
from workers.writer.admission_child import Admitter

CONSUMER = "writer-under-test"
OWNER = "writer-under-test:0001"  # its lease token


def _xadd(client: redis.Redis, pairs: list[tuple[str, bytes | str]]) -> str:
    flat = [x for pair in pairs for x in pair]
    return client.execute_command("XADD", c.STREAM_INTENTS, "*", *flat).decode()


def _every_kind_of_entry(client: redis.Redis, keyring: Keyring) -> int:
    cashier, frontend = keyring.get("cashier"), keyring.get("frontend")
    unicode_bet = new_bet(8, 5, "Fußball", "Heim", "2.50")  # valid; only pydantic takes it
    bodies = [
        (cashier, intent_body(new_deposit(7, 100))),  # fast path
        (frontend, intent_body(new_bet(7, 10, "m1", "home", "1.90"))),  # fast path
        (frontend, intent_body(unicode_bet)),
        (cashier, encode_body({**json.loads(intent_body(new_deposit(7, 1))), "amount": 0})),
        (frontend, intent_body(new_deposit(7, 100))),  # forbidden kind for this key
    ]
    for key, body in bodies:
        _xadd(client, list(entry_fields(key, body).items()))
    forged = entry_fields(cashier, intent_body(new_deposit(9, 1)))
    _xadd(client, [*forged.items()][:3] + [(c.FIELD_SIG, "0" * 64)])  # bad signature
    twice = list(entry_fields(cashier, intent_body(new_deposit(9, 2))).items())
    _xadd(client, twice + [twice[2]])  # a field given twice: malformed
    ghost = Key("ghost", b"ghost-secret-0000000000", frozenset({"deposit"}))
    _xadd(client, list(entry_fields(ghost, intent_body(new_deposit(9, 3))).items()))
    return len(bodies) + 3


def _admitted_in_process(client: redis.Redis, keyring: Keyring):
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XRANGE", lambda reply, **_: reply)
    results = [admit_entry(eid.decode(), _fields(flat), keyring)
               for eid, flat in raw.xrange(c.STREAM_INTENTS)]
    return ([r for r in results if isinstance(r, Candidate)],
            [r for r in results if isinstance(r, DeadLetter)])


@pytest.fixture
def admitter(settings: Settings, redis_client: redis.Redis):
    redis_client.set(c.KEY_WRITER_LEASE, OWNER)  # the writer leads
    handle = Admitter(load_settings(admission_restart_ms=0), CONSUMER)
    yield handle
    handle.close()


def test_the_child_admits_every_kind_of_entry_exactly_as_the_writer_would(
        redis_client: redis.Redis, keyring: Keyring, admitter: Admitter) -> None:
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    n = _every_kind_of_entry(redis_client, keyring)
    assert admitter.ask(keyring, OWNER)
    entries, candidates, dead, _ = admitter.collect()
    assert (candidates, dead) == _admitted_in_process(redis_client, keyring)
    assert [e for e, _ in entries] == [eid.decode() for eid, _ in
                                       redis_client.xrange(c.STREAM_INTENTS)]
    reasons = sorted(x.pre_reason or "ok" for x in candidates) + sorted(d.reason for d in dead)
    assert reasons == ["forbidden_kind", "invalid", "ok", "ok", "ok",
                       "bad_signature", "malformed", "unknown_kid"]
    pending = redis_client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)
    assert pending["pending"] == n and {x["name"] for x in pending["consumers"]} == {
        CONSUMER.encode()}, "what the child read is pending under the writer's consumer"
    assert admitter.ask(keyring, OWNER)
    assert admitter.collect()[:3] == ([], [], []), "nothing new: an empty batch, no error"


def test_a_reloaded_keyring_reaches_the_child(
        redis_client: redis.Redis, keyring: Keyring, keyring_path, admitter: Admitter) -> None:
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    new_key = Key("cashier-2", b"cashier-two-secret-00001", frozenset({"deposit"}))
    body = intent_body(new_deposit(7, 100))
    _xadd(redis_client, list(entry_fields(new_key, body).items()))
    assert admitter.ask(keyring, OWNER)
    _, candidates, dead, _ = admitter.collect()
    assert not candidates and [d.reason for d in dead] == ["unknown_kid"]

    raw = json.loads(keyring_path.read_text())
    raw["cashier-2"] = {"secret": "cashier-two-secret-00001", "kinds": ["deposit"]}
    reloaded = Keyring.from_mapping(raw)
    _xadd(redis_client, list(entry_fields(new_key, body).items()))
    assert admitter.ask(reloaded, OWNER)
    _, candidates, dead, _ = admitter.collect()
    assert [(x.kid, x.pre_reason) for x in candidates] == [("cashier-2", None)] and not dead


def test_a_killed_child_fails_one_read_and_a_new_one_takes_over(
        redis_client: redis.Redis, keyring: Keyring, admitter: Admitter) -> None:
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    assert admitter.ask(keyring, OWNER)
    assert admitter.collect()[:3] == ([], [], [])
    first = admitter.pid
    os.kill(first, signal.SIGKILL)
    os.waitpid(first, 0)
    assert not admitter.ask(keyring, OWNER) or admitter.collect() is None, "the failure is reported"
    _xadd(redis_client, list(entry_fields(keyring.get("cashier"),
                                          intent_body(new_deposit(7, 5))).items()))
    assert admitter.ask(keyring, OWNER), "a new child is started (restart delay 0 here)"
    entries, candidates, _, _ = admitter.collect()
    assert admitter.pid not in (None, first)
    assert len(entries) == len(candidates) == 1


def test_asking_twice_before_collecting_reads_one_batch(
        redis_client: redis.Redis, keyring: Keyring, admitter: Admitter) -> None:
    """A retried step may ask again: one batch stays in flight, none is left in the pipe."""
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    _xadd(redis_client, list(entry_fields(keyring.get("cashier"),
                                          intent_body(new_deposit(7, 5))).items()))
    assert admitter.ask(keyring, OWNER) and admitter.ask(keyring, OWNER) and admitter.asked
    entries, _, _, _ = admitter.collect()
    assert len(entries) == 1 and not admitter.asked
    assert admitter.ask(keyring, OWNER)
    assert admitter.collect()[:3] == ([], [], []), "no second reply was waiting"


def test_a_writer_that_lost_the_lease_reads_nothing(
        redis_client: redis.Redis, keyring: Keyring, admitter: Admitter) -> None:
    """A frozen writer woken after a takeover must not pull entries into its pending list
    after the new leader claimed everything (they would be decided late, out of order):
    the read runs only while the lease is ours (WATCH, then MULTI)."""
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    _xadd(redis_client, list(entry_fields(keyring.get("cashier"),
                                          intent_body(new_deposit(7, 5))).items()))
    redis_client.set(c.KEY_WRITER_LEASE, "another-writer:0002")
    assert admitter.ask(keyring, OWNER)
    assert admitter.collect()[:3] == ([], [], [])
    in_process = IntentStream(redis_client, load_settings(), CONSUMER)
    assert in_process.read_new_now(OWNER) == []
    assert redis_client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)["pending"] == 0
    redis_client.set(c.KEY_WRITER_LEASE, OWNER)
    assert len(in_process.read_new_now(OWNER)) == 1, "once it leads again, it reads"


def test_a_lease_taken_between_the_check_and_the_read_aborts_the_read(
        redis_client: redis.Redis, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease is checked, then taken over before the read runs: the read must not
    happen (EXEC aborts on the WATCHed lease), so nothing lands in our pending list."""
    stream = IntentStream(redis_client, load_settings(), CONSUMER)
    stream.ensure_group()
    _xadd(redis_client, list(entry_fields(keyring.get("cashier"),
                                          intent_body(new_deposit(7, 5))).items()))
    redis_client.set(c.KEY_WRITER_LEASE, OWNER)
    get = redis.client.Pipeline.get

    def get_then_lose_the_lease(pipe: redis.client.Pipeline, name: str) -> object:
        held = get(pipe, name)  # we still hold it here ...
        redis_client.set(c.KEY_WRITER_LEASE, "another-writer:0002")  # ... and now not
        return held

    monkeypatch.setattr(redis.client.Pipeline, "get", get_then_lose_the_lease)
    assert stream.read_new_now(OWNER) == []
    assert redis_client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)["pending"] == 0


def test_a_batch_of_plain_intents_is_admitted_exactly_as_the_writer_would(
        redis_client: redis.Redis, keyring: Keyring, admitter: Admitter) -> None:
    """Every entry a fast-path intent: the writer builds the candidates in one pass."""
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    for key, body in plain_intents(keyring, 20):
        _xadd(redis_client, list(entry_fields(key, body).items()))
    assert admitter.ask(keyring, OWNER)
    entries, candidates, dead, _ = admitter.collect()
    assert (candidates, dead) == _admitted_in_process(redis_client, keyring)
    assert len(entries) == len(candidates) == 20 and not dead
    assert {x.kind for x in candidates} == {"deposit", "bet"}


def _frozen_for(pid: int, seconds: float) -> threading.Timer:
    """SIGSTOP the child now, SIGCONT it ``seconds`` later: a reply that cannot come sooner."""
    os.kill(pid, signal.SIGSTOP)

    def thaw() -> None:
        with contextlib.suppress(ProcessLookupError):  # stopped for good meanwhile
            os.kill(pid, signal.SIGCONT)

    timer = threading.Timer(seconds, thaw)
    timer.start()
    return timer


def _deposit(client: redis.Redis, keyring: Keyring, user: int) -> str:
    return _xadd(client, list(entry_fields(keyring.get("cashier"),
                                           intent_body(new_deposit(user, 5))).items()))


@pytest.fixture
def short_lease_admitter(settings: Settings, redis_client: redis.Redis, keyring: Keyring):
    """A started child under a 600 ms lease (renewed every 200 ms), nothing asked yet."""
    redis_client.set(c.KEY_WRITER_LEASE, OWNER)
    s = load_settings(admission_restart_ms=0, lease_ms=600)
    assert s.redis_url == settings.redis_url, "the test's own redis-server"
    IntentStream(redis_client, s, CONSUMER).ensure_group()
    handle = Admitter(s, CONSUMER)
    assert handle.ask(keyring, OWNER) and handle.collect()[:3] == ([], [], [])  # started
    yield handle
    handle.close()


def test_the_writer_renews_its_lease_while_a_slow_child_replies(
        redis_client: redis.Redis, keyring: Keyring, short_lease_admitter: Admitter) -> None:
    """A reply may take as long as the lease (a child starting, a busy core): waiting for it
    must not let the lease lapse, or another writer takes the stream over for nothing."""
    handle = short_lease_admitter
    _deposit(redis_client, keyring, 7)
    renewals = []
    timer = _frozen_for(handle.pid, 1.0)  # before asking: a quick child answers at once
    assert handle.ask(keyring, OWNER)
    entries, candidates, _, _ = handle.collect(lambda: renewals.append(1))
    timer.join()
    assert len(entries) == len(candidates) == 1, "the slow reply still arrives"
    assert len(renewals) >= 3, f"kept alive {len(renewals)} times in a 1 s wait"


def test_a_lease_lost_while_waiting_stops_the_child_so_its_reply_cannot_answer_later(
        redis_client: redis.Redis, keyring: Keyring, short_lease_admitter: Admitter) -> None:
    """Left running, the child would answer the abandoned request after the next one is
    asked, and every later batch would be the one before."""
    handle = short_lease_admitter
    first = _deposit(redis_client, keyring, 7)
    frozen = handle.pid
    timer = _frozen_for(frozen, 0.5)  # before asking: a quick child answers at once
    assert handle.ask(keyring, OWNER)

    def lost() -> None:
        raise LeaseLost("taken")

    with pytest.raises(LeaseLost):
        handle.collect(lost)
    timer.join()
    assert handle.pid is None and not handle.asked, "the child was stopped"
    second = _deposit(redis_client, keyring, 8)
    assert handle.ask(keyring, OWNER) and handle.pid not in (None, frozen)
    ids = [e for e, _ in handle.collect()[0]]
    assert second in ids and set(ids) <= {first, second}, "this request's reply"
    third = _deposit(redis_client, keyring, 9)
    assert handle.ask(keyring, OWNER)
    assert [e for e, _ in handle.collect()[0]] == [third], "and the next one's"


def test_the_child_claims_the_nonces_of_fresh_intents_and_reports_replays(
        redis_client: redis.Redis, keyring: Keyring, admitter: Admitter) -> None:
    """The child claims nonces as the writer would before deciding: a second intent with
    the same key and nonce finds the first one holding it (the writer then refuses it as a
    replay), and an intent already stale claims nothing (it is refused as stale)."""
    IntentStream(redis_client, load_settings(), CONSUMER).ensure_group()
    cashier = keyring.get("cashier")
    first = new_deposit(7, 100)
    replay = first.model_copy(update={"id": new_deposit(7, 100).id})
    stale = first.model_copy(update={"id": new_deposit(7, 1).id, "nonce": new_nonce(),
                                     "issued_at": first.issued_at - 3_600_000})
    ids = [_xadd(redis_client, list(entry_fields(cashier, intent_body(i)).items()))
           for i in (first, replay, stale)]
    assert admitter.ask(keyring, OWNER)
    got = admitter.collect()
    assert [x.pre_reason for x in got.candidates] == [None, None, None]
    assert all(isinstance(x.intent, msgspec.Struct) for x in got.candidates), "all fast"
    assert got.claims == {ids[0]: None, ids[1]: first.id}, "the stale one is not claimed"
    nonce_key = c.nonce_key("cashier", first.nonce)
    assert redis_client.get(nonce_key) == first.id.encode()
    assert redis_client.get(c.nonce_key("cashier", stale.nonce)) is None
