"""Every way an intent can be refused, sent through the real stream to a running writer.

Each test pushes a bad intent with XADD (crafted with the producer's own contract and
signing helpers), checks what the user (or operator) would see — an outcome row and a
confirmation, or a dead letter — and then proves the writer is still serving by getting
a valid intent accepted afterwards.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import constants as c
from producer.client import entry_fields
from producer.contract import encode_body, new_nonce, now_ms
from producer.signing import Key, Keyring, sign
from tests.conftest import Procs, wait_for
from tests.support import (
    balances,
    confirmations,
    deadletters,
    deliver_confirmations,
    drained,
    query,
)
from workers.adapters.ledger_store import Store
from workers.adapters.metrics_store import Recorder
from workers.adapters.redis_connection import redis_client as make_client
from workers.core.decision import REASONS
from workers.settings import Settings, load_settings
from workers.writer.batch_writer import Writer
from workers.writer.hooks import Hooks, MetricsHook

DEADLINE_S = 15.0
_next_user = iter(range(1000, 10_000_000))


# ---------------------------------------------------------------------------- helpers

def new_user() -> int:
    """A user id no other intent in this test has touched."""
    return next(_next_user)


def body(kind: str, user_id: int, **extra: Any) -> dict[str, Any]:
    """A contract-v1 body as a plain dict (so a test can break any field before signing)."""
    return {"id": str(uuid.uuid4()), "kind": kind, "user_id": user_id, "nonce": new_nonce(),
            "issued_at": now_ms(), **extra}


def bet_body(user_id: int, amount: int, **extra: Any) -> dict[str, Any]:
    return body("bet", user_id, amount=amount, market="final", selection="home", odds="2.50",
                **extra)


def xadd(client: redis.Redis, fields: dict) -> str:
    entry_id = client.xadd(c.STREAM_INTENTS, fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def send(client: redis.Redis, key: Key, fields_or_body: dict[str, Any] | bytes) -> str:
    """Sign ``fields_or_body`` with ``key`` exactly as a producer would, and XADD it."""
    raw = fields_or_body if isinstance(fields_or_body, bytes) else encode_body(fields_or_body)
    return xadd(client, entry_fields(key, raw))


def outcomes_for(db: Any, intent_id: str) -> list[dict[str, Any]]:
    if not Path(db).exists():
        return []  # a writer process has not created the ledger yet
    try:
        rows = query(db, "SELECT status, reason, detail, balance, seq, entry_id FROM outcomes "
                         "WHERE id = ? ORDER BY seq", (intent_id,))
    except sqlite3.OperationalError:
        return []  # the writer is still creating the schema
    return [dict(zip(("status", "reason", "detail", "balance", "seq", "entry_id"), r))
            for r in rows]


def wait_outcome(db: Any, intent_id: str, n: int = 1) -> dict[str, Any]:
    """The first outcome for ``intent_id`` once ``n`` outcome rows exist for it."""
    rows = wait_for(lambda: (lambda o: o if len(o) >= n else None)(outcomes_for(db, intent_id)),
                    DEADLINE_S, f"{n} outcome(s) for intent {intent_id}")
    return rows[0]  # type: ignore[index]


def wait_dead(client: redis.Redis, entry_id: str) -> dict[str, str]:
    def find() -> dict[str, str] | None:
        return next((d for d in deadletters(client) if d["entry_id"] == entry_id), None)
    return wait_for(find, DEADLINE_S, f"a dead letter for entry {entry_id}")  # type: ignore


def published(client: redis.Redis, intent_id: str, settings: Settings) -> list[dict[str, Any]]:
    """Confirmations for ``intent_id`` on betstream:confirmations, after the confirmer ran."""
    deliver_confirmations(client, settings)
    return [m for m in confirmations(client) if m["id"] == intent_id]


def ledger_rows(db: Any, txn_id: str) -> int:
    return query(db, "SELECT COUNT(*) FROM transaction_ledger WHERE txn_id = ?", (txn_id,))[0][0]


@dataclass
class RunningWriter:
    """An in-process writer thread on the test's Redis and SQLite file."""

    settings: Settings
    client: redis.Redis
    keyring: Keyring
    thread: threading.Thread
    stop: threading.Event
    errors: list[BaseException]

    @property
    def db(self) -> Any:
        return self.settings.db

    def key(self, kid: str) -> Key:
        return self.keyring.get(kid)

    def deposit(self, user_id: int, amount: int) -> str:
        """A deposit that must be accepted (used to fund users and to prove liveness)."""
        b = body("deposit", user_id, amount=amount)
        send(self.client, self.key("cashier"), b)
        out = wait_outcome(self.db, b["id"])
        assert out["status"] == "accepted", out
        return b["id"]

    def assert_still_serving(self) -> None:
        """The writer survived whatever came before: a fresh valid intent is accepted."""
        assert self.thread.is_alive() and not self.errors, self.errors
        user = new_user()
        intent_id = self.deposit(user, 4_321)
        assert outcomes_for(self.db, intent_id)[0]["balance"] == 4_321
        wait_for(lambda: published(self.client, intent_id, self.settings), DEADLINE_S,
                 "the liveness deposit to be confirmed")


@pytest.fixture
def start_writer(settings: Settings, redis_client: redis.Redis,
                 keyring: Keyring) -> Iterator[Callable[..., RunningWriter]]:
    """Start an in-process writer with optional settings overrides; stopped at teardown."""
    started: list[tuple[RunningWriter, Writer, Store, redis.Redis]] = []

    def start(**overrides: Any) -> RunningWriter:
        s = load_settings(lease_ms=2000, batch_wait_ms=5, **overrides)
        client = make_client(s.redis_url)
        store = Store(s.db, s.sqlite_busy_timeout_ms)
        hooks = Hooks(MetricsHook(Recorder(client, 0)))  # counts flushed every batch
        writer = Writer(s, client, store, keyring, hooks, consumer=f"t-writer-{len(started)}")
        stop, errors = threading.Event(), []

        def run() -> None:
            try:
                writer.run(stop)
            except BaseException as exc:  # surfaced by assert_still_serving and teardown
                errors.append(exc)

        thread = threading.Thread(target=run, name="writer", daemon=True)
        thread.start()
        handle = RunningWriter(s, redis_client, keyring, thread, stop, errors)
        started.append((handle, writer, store, client))
        return handle

    yield start
    for handle, _writer, store, client in started:
        handle.stop.set()
        handle.thread.join(10)
        assert not handle.thread.is_alive(), "the writer thread did not stop"
        store.close()
        client.close()
    for handle, *_ in started:
        assert not handle.errors, handle.errors


@pytest.fixture
def w(start_writer: Callable[..., RunningWriter]) -> RunningWriter:
    return start_writer()


# ---------------------------------------------------------------------------- dead letters

def test_forged_signature_is_dead_lettered_and_never_confirmed(w: RunningWriter) -> None:
    """A body signed with the wrong secret never touches the ledger nor reaches the user."""
    b = body("deposit", new_user(), amount=1_000_000)
    raw = encode_body(b)
    impostor = Key("cashier", b"not-the-cashier-secret-at-all", frozenset({"deposit"}))
    entry = xadd(w.client, {"v": "1", "kid": "cashier", "body": raw, "sig": sign(impostor, raw)})

    dead = wait_dead(w.client, entry)
    assert dead["reason"] == "bad_signature"
    assert dead["kid"] == "cashier"
    w.assert_still_serving()
    assert outcomes_for(w.db, b["id"]) == []
    assert published(w.client, b["id"], w.settings) == []
    assert b["user_id"] not in balances(w.db)
    assert int(w.client.hget(c.KEY_STATS, "deadletter:bad_signature")) == 1


def test_tampered_body_after_signing_is_dead_lettered(w: RunningWriter) -> None:
    """Raising the amount after the cashier signed it breaks the signature."""
    b = body("deposit", new_user(), amount=100)
    fields = entry_fields(w.key("cashier"), encode_body(b))
    fields["body"] = encode_body({**b, "amount": 100_000_000})
    entry = xadd(w.client, fields)

    assert wait_dead(w.client, entry)["reason"] == "bad_signature"
    w.assert_still_serving()
    assert outcomes_for(w.db, b["id"]) == []


def test_unknown_kid_is_dead_lettered(w: RunningWriter) -> None:
    """A key id missing from the keyring is parked as unknown_kid, with no outcome."""
    b = body("deposit", new_user(), amount=500)
    ghost = Key("ghost", b"ghost-secret-0000000000", frozenset({"deposit"}))
    entry = send(w.client, ghost, b)

    dead = wait_dead(w.client, entry)
    assert dead["reason"] == "unknown_kid"
    assert dead["kid"] == "ghost"
    w.assert_still_serving()
    assert outcomes_for(w.db, b["id"]) == []
    assert published(w.client, b["id"], w.settings) == []


def test_non_json_body_with_valid_signature_is_dead_lettered_malformed(w: RunningWriter) -> None:
    """Signed garbage cannot be attributed to anyone, so it is dead-lettered, not confirmed."""
    entry = send(w.client, w.key("cashier"), b"this is {not json")

    dead = wait_dead(w.client, entry)
    assert dead["reason"] == "malformed"
    assert dead["kid"] == "cashier"
    w.assert_still_serving()
    assert query(w.db, "SELECT COUNT(*) FROM outcomes WHERE entry_id = ?", (entry,))[0][0] == 0


@pytest.mark.parametrize("mangle, reason", [
    (lambda f: {k: v for k, v in f.items() if k != "sig"}, "malformed"),
    (lambda f: {**f, "extra": "x"}, "malformed"),
    (lambda f: {**f, "v": "2"}, "unsupported_version"),
    (lambda f: {**f, "sig": f["sig"][:10]}, "bad_signature"),
], ids=["missing-sig", "extra-field", "wire-v2", "short-sig"])
def test_broken_framing_is_dead_lettered(w: RunningWriter, mangle: Callable, reason: str) -> None:
    """Entries that do not follow wire contract v1 framing are parked with their reason."""
    b = body("deposit", new_user(), amount=10)
    entry = xadd(w.client, mangle(entry_fields(w.key("cashier"), encode_body(b))))

    assert wait_dead(w.client, entry)["reason"] == reason
    w.assert_still_serving()
    assert outcomes_for(w.db, b["id"]) == []


def test_oversized_body_is_dead_lettered_too_large(w: RunningWriter) -> None:
    """A signed body over 4 KiB is refused before it is parsed."""
    b = body("deposit", new_user(), amount=10, pad="x" * 5000)
    entry = send(w.client, w.key("cashier"), b)

    assert wait_dead(w.client, entry)["reason"] == "too_large"
    w.assert_still_serving()
    assert outcomes_for(w.db, b["id"]) == []


# ---------------------------------------------------------------------------- rejected outcomes

@pytest.mark.parametrize("kid, kind", [
    ("frontend", "deposit"), ("frontend", "withdrawal"), ("cashier", "bet"),
    ("settlement", "deposit"),
])
def test_key_signing_a_kind_it_may_not_is_rejected_forbidden_kind(
        w: RunningWriter, kid: str, kind: str) -> None:
    """A front-end key minting money (or any key outside its kinds) gets forbidden_kind."""
    user = new_user()
    w.deposit(user, 1_000)
    extra = ({"market": "m", "selection": "s", "odds": "2.00"} if kind == "bet" else {})
    b = body(kind, user, amount=700, **extra)
    send(w.client, w.key(kid), b)

    out = wait_outcome(w.db, b["id"])
    assert (out["status"], out["reason"]) == ("rejected", "forbidden_kind")
    assert out["balance"] == 1_000, "the balance in the outcome is unchanged"
    w.assert_still_serving()
    assert balances(w.db)[user] == 1_000
    assert ledger_rows(w.db, b["id"]) == 0
    msg = wait_for(lambda: published(w.client, b["id"], w.settings), DEADLINE_S, "the rejection published")
    assert msg[0]["status"] == "rejected" and msg[0]["reason"] == "forbidden_kind"


@pytest.mark.parametrize("issued_offset_ms", [-10 * 60_000, +10 * 60_000],
                         ids=["issued-long-ago", "issued-in-the-future"])
def test_intent_issued_far_from_its_ingress_is_rejected_stale(
        w: RunningWriter, issued_offset_ms: int) -> None:
    """An intent signed ten minutes ago (or ahead) is refused as stale, money untouched."""
    user = new_user()
    b = body("deposit", user, amount=900, issued_at=now_ms() + issued_offset_ms)
    send(w.client, w.key("cashier"), b)

    out = wait_outcome(w.db, b["id"])
    assert (out["status"], out["reason"]) == ("rejected", "stale")
    w.assert_still_serving()
    assert user not in balances(w.db), "a stale first deposit opens no account"
    assert ledger_rows(w.db, b["id"]) == 0
    assert not w.client.exists(c.nonce_key("cashier", b["nonce"])), "a stale nonce is not spent"


def test_intent_waiting_in_the_stream_too_long_is_rejected_stale(
        procs: Procs, redis_client: redis.Redis, keyring: Keyring, env: dict[str, str]) -> None:
    """An intent queued longer than BETSTREAM_INTENT_AGE_MAX_MS before any writer runs is
    rejected stale (real writer process); a fresh one afterwards is accepted."""
    db = env["BETSTREAM_DB"]
    cashier = keyring.get("cashier")
    old_user, new = new_user(), new_user()
    old = body("deposit", old_user, amount=300)
    entry = send(redis_client, cashier, old)
    ingress = int(entry.split("-")[0])
    wait_for(lambda: now_ms() - ingress > 800, 5, "the queued intent to age past 500 ms")

    writer = procs.start("writer", BETSTREAM_INTENT_AGE_MAX_MS="500",
                         BETSTREAM_BREAKER_BACKLOG_AGE_MAX_MS="400")
    out = wait_outcome(db, old["id"])
    assert (out["status"], out["reason"]) == ("rejected", "stale")

    fresh = body("deposit", new, amount=300)
    send(redis_client, cashier, fresh)
    out = wait_outcome(db, fresh["id"])
    assert (out["status"], out["reason"], out["balance"]) == ("accepted", None, 300)
    assert writer.poll() is None, "the writer process keeps running"
    assert old_user not in balances(db)


def test_replayed_nonce_under_another_id_is_rejected_replay(w: RunningWriter) -> None:
    """Re-using a nonce (same key) for a second intent id is refused; no second deposit."""
    user = new_user()
    first = body("deposit", user, amount=250)
    send(w.client, w.key("cashier"), first)
    assert wait_outcome(w.db, first["id"])["status"] == "accepted"

    again = {**first, "id": str(uuid.uuid4())}
    send(w.client, w.key("cashier"), again)
    out = wait_outcome(w.db, again["id"])
    assert (out["status"], out["reason"], out["balance"]) == ("rejected", "replay", 250)
    w.assert_still_serving()
    assert balances(w.db)[user] == 250
    assert ledger_rows(w.db, again["id"]) == 0


def test_replay_within_one_batch_accepts_only_the_first(w: RunningWriter) -> None:
    """Two ids with one nonce pushed back to back: exactly the first one is applied."""
    user = new_user()
    w.deposit(user, 1_000)
    first = bet_body(user, 100)
    second = {**bet_body(user, 100), "nonce": first["nonce"]}
    pipe = w.client.pipeline(transaction=True)
    for b in (first, second):
        pipe.xadd(c.STREAM_INTENTS, entry_fields(w.key("frontend"), encode_body(b)))
    pipe.execute()

    assert wait_outcome(w.db, first["id"])["status"] == "accepted"
    out = wait_outcome(w.db, second["id"])
    assert (out["status"], out["reason"]) == ("rejected", "replay")
    w.assert_still_serving()
    assert balances(w.db)[user] == 900


def test_same_nonce_under_another_key_is_not_a_replay(w: RunningWriter) -> None:
    """Nonces are unique per key: the cashier and the front end may pick the same one."""
    user = new_user()
    dep = body("deposit", user, amount=500)
    send(w.client, w.key("cashier"), dep)
    assert wait_outcome(w.db, dep["id"])["status"] == "accepted"
    bet = bet_body(user, 200, ) | {"nonce": dep["nonce"]}
    send(w.client, w.key("frontend"), bet)
    assert wait_outcome(w.db, bet["id"])["status"] == "accepted"


@pytest.mark.parametrize("field, value", [
    ("amount", 10.5), ("amount", "100"), ("amount", True), ("amount", 0), ("odds", "2.505"),
    ("odds", 2.5), ("surprise", 1),
])
def test_signed_but_invalid_body_is_rejected_invalid_naming_the_field(
        w: RunningWriter, field: str, value: Any) -> None:
    """A correctly signed bet with a float amount (etc.) is refused as invalid, and the
    detail tells the user which field is wrong."""
    user = new_user()
    w.deposit(user, 1_000)
    b = {**bet_body(user, 100), field: value}
    send(w.client, w.key("frontend"), b)

    out = wait_outcome(w.db, b["id"])
    assert (out["status"], out["reason"]) == ("rejected", "invalid")
    assert field in out["detail"], out["detail"]
    assert out["balance"] == 1_000
    w.assert_still_serving()
    assert balances(w.db)[user] == 1_000
    assert query(w.db, "SELECT COUNT(*) FROM bets WHERE id = ?", (b["id"],))[0][0] == 0
    msg = wait_for(lambda: published(w.client, b["id"], w.settings), DEADLINE_S, "the rejection published")
    assert msg[0]["reason"] == "invalid" and field in msg[0]["detail"]


def test_float_deposit_amount_is_rejected_invalid(w: RunningWriter) -> None:
    """Money is never a float: a signed deposit of 10.5 is refused, no account is opened."""
    user = new_user()
    b = body("deposit", user, amount=10.5)
    send(w.client, w.key("cashier"), b)

    out = wait_outcome(w.db, b["id"])
    assert (out["status"], out["reason"]) == ("rejected", "invalid")
    assert "amount" in out["detail"]
    w.assert_still_serving()
    assert user not in balances(w.db)


def test_bet_above_balance_is_rejected_insufficient_funds(w: RunningWriter) -> None:
    """A stake above the balance is refused with the (unchanged) balance; a bet within it
    still goes through."""
    user = new_user()
    w.deposit(user, 1_000)
    too_big = bet_body(user, 1_001)
    send(w.client, w.key("frontend"), too_big)
    out = wait_outcome(w.db, too_big["id"])
    assert (out["status"], out["reason"], out["balance"]) == (
        "rejected", "insufficient_funds", 1_000)

    exact = bet_body(user, 1_000)
    send(w.client, w.key("frontend"), exact)
    out = wait_outcome(w.db, exact["id"])
    assert (out["status"], out["balance"]) == ("accepted", 0)

    withdraw = body("withdrawal", user, amount=1)
    send(w.client, w.key("cashier"), withdraw)
    out = wait_outcome(w.db, withdraw["id"])
    assert (out["status"], out["reason"], out["balance"]) == ("rejected", "insufficient_funds", 0)
    w.assert_still_serving()
    assert ledger_rows(w.db, too_big["id"]) == 0 and ledger_rows(w.db, withdraw["id"]) == 0
    assert balances(w.db)[user] == 0


@pytest.mark.parametrize("kind", ["bet", "withdrawal"])
def test_intent_for_a_user_who_never_deposited_is_rejected_unknown_user(
        w: RunningWriter, kind: str) -> None:
    """A bet (or withdrawal) for an account that was never opened is refused, none created."""
    user = new_user()
    if kind == "bet":
        b, kid = bet_body(user, 10), "frontend"
    else:
        b, kid = body("withdrawal", user, amount=10), "cashier"
    send(w.client, w.key(kid), b)

    out = wait_outcome(w.db, b["id"])
    assert (out["status"], out["reason"], out["balance"]) == ("rejected", "unknown_user", None)
    w.assert_still_serving()
    assert user not in balances(w.db)


def test_same_entry_sent_twice_is_confirmed_twice_but_applied_once(w: RunningWriter) -> None:
    """A producer retry (identical fields XADDed again) gets the original outcome re-published
    with duplicate=true; one outcome row, one ledger effect."""
    user = new_user()
    w.deposit(user, 1_000)
    b = bet_body(user, 400)
    fields = entry_fields(w.key("frontend"), encode_body(b))
    xadd(w.client, fields)
    original = wait_outcome(w.db, b["id"])
    assert original["status"] == "accepted"
    wait_for(lambda: published(w.client, b["id"], w.settings), DEADLINE_S, "the first confirmation")

    xadd(w.client, fields)
    msgs = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(published(w.client, b["id"], w.settings)),
                    DEADLINE_S, "the re-published confirmation")
    first, second = msgs  # type: ignore[misc]
    assert first["duplicate"] is False and second["duplicate"] is True
    assert {k: v for k, v in second.items() if k != "duplicate"} == \
           {k: v for k, v in first.items() if k != "duplicate"}, "the original outcome again"
    assert second["seq"] == original["seq"] and second["balance"] == 600
    w.assert_still_serving()
    assert len(outcomes_for(w.db, b["id"])) == 1
    assert ledger_rows(w.db, b["id"]) == 2
    assert balances(w.db)[user] == 600
    assert query(w.db, "SELECT COUNT(*) FROM bets WHERE id = ?", (b["id"],))[0][0] == 1


def test_same_entry_twice_in_one_batch_is_applied_once(w: RunningWriter) -> None:
    """Both copies land in one batch: one effect, and the copy is confirmed as a duplicate."""
    user = new_user()
    w.deposit(user, 1_000)
    b = body("withdrawal", user, amount=300)
    fields = entry_fields(w.key("cashier"), encode_body(b))
    pipe = w.client.pipeline(transaction=True)
    pipe.xadd(c.STREAM_INTENTS, fields)
    pipe.xadd(c.STREAM_INTENTS, fields)
    pipe.execute()

    msgs = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(published(w.client, b["id"], w.settings)),
                    DEADLINE_S, "both confirmations")
    assert sorted(m["duplicate"] for m in msgs) == [False, True]  # type: ignore[union-attr]
    assert {m["balance"] for m in msgs} == {700}  # type: ignore[union-attr]
    w.assert_still_serving()
    assert len(outcomes_for(w.db, b["id"])) == 1
    assert balances(w.db)[user] == 700


def test_same_id_with_another_body_is_rejected_id_conflict(w: RunningWriter) -> None:
    """Re-using an intent id for a different bet is refused; the original bet stands."""
    user = new_user()
    w.deposit(user, 1_000)
    original = bet_body(user, 100)
    send(w.client, w.key("frontend"), original)
    assert wait_outcome(w.db, original["id"])["status"] == "accepted"

    conflicting = {**bet_body(user, 500), "id": original["id"]}
    send(w.client, w.key("frontend"), conflicting)
    rows = wait_for(lambda: (lambda o: o if len(o) == 2 else None)(
        outcomes_for(w.db, original["id"])), DEADLINE_S, "the id_conflict outcome")
    first, second = rows  # type: ignore[misc]
    assert (first["status"], first["reason"]) == ("accepted", None)
    assert (second["status"], second["reason"], second["balance"]) == (
        "rejected", "id_conflict", 900)
    msgs = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(
        published(w.client, original["id"], w.settings)), DEADLINE_S, "the id_conflict confirmation")
    assert msgs[1]["reason"] == "id_conflict" and msgs[1]["duplicate"] is False  # type: ignore
    w.assert_still_serving()
    assert balances(w.db)[user] == 900
    assert query(w.db, "SELECT stake FROM bets WHERE id = ?", (original["id"],)) == [(100,)]
    assert ledger_rows(w.db, original["id"]) == 2

    # The original, sent again, is still recognised as the original.
    send(w.client, w.key("frontend"), original)
    msgs = wait_for(lambda: (lambda m: m if len(m) == 3 else None)(
        published(w.client, original["id"], w.settings)), DEADLINE_S, "the duplicate confirmation")
    assert msgs[2]["duplicate"] is True and msgs[2]["status"] == "accepted"  # type: ignore


def test_settling_an_unknown_bet_is_rejected_unknown_bet(w: RunningWriter) -> None:
    """Settling a bet that does not exist (or belongs to someone else) pays nothing."""
    user, other = new_user(), new_user()
    w.deposit(user, 1_000)
    w.deposit(other, 1_000)
    bet = bet_body(user, 100)
    send(w.client, w.key("frontend"), bet)
    assert wait_outcome(w.db, bet["id"])["status"] == "accepted"

    ghost = body("settle", user, bet_id=str(uuid.uuid4()), outcome="won")
    not_yours = body("settle", other, bet_id=bet["id"], outcome="won")
    for b in (ghost, not_yours):
        send(w.client, w.key("settlement"), b)
    for b in (ghost, not_yours):
        out = wait_outcome(w.db, b["id"])
        assert (out["status"], out["reason"]) == ("rejected", "unknown_bet"), b
    w.assert_still_serving()
    assert balances(w.db)[user] == 900 and balances(w.db)[other] == 1_000
    assert query(w.db, "SELECT status FROM bets WHERE id = ?", (bet["id"],)) == [("open",)]


def test_settling_a_bet_twice_is_rejected_already_settled(w: RunningWriter) -> None:
    """A second settlement of the same bet (new intent id) never pays out twice."""
    user = new_user()
    w.deposit(user, 1_000)
    bet = bet_body(user, 100)  # odds 2.50 -> payout 250
    send(w.client, w.key("frontend"), bet)
    assert wait_outcome(w.db, bet["id"])["status"] == "accepted"

    won = body("settle", user, bet_id=bet["id"], outcome="won")
    send(w.client, w.key("settlement"), won)
    out = wait_outcome(w.db, won["id"])
    assert (out["status"], out["balance"]) == ("accepted", 1_150)

    again = body("settle", user, bet_id=bet["id"], outcome="void")
    send(w.client, w.key("settlement"), again)
    out = wait_outcome(w.db, again["id"])
    assert (out["status"], out["reason"], out["balance"]) == (
        "rejected", "already_settled", 1_150)
    w.assert_still_serving()
    assert balances(w.db)[user] == 1_150
    assert query(w.db, "SELECT status FROM bets WHERE id = ?", (bet["id"],)) == [("won",)]


def market_body(kind: str, market: str) -> dict[str, Any]:
    """A contract-v1.1 market intent: no user_id."""
    return {"id": str(uuid.uuid4()), "kind": kind, "market": market, "nonce": new_nonce(),
            "issued_at": now_ms()}


def test_a_bet_on_a_suspended_market_is_rejected_market_suspended(w: RunningWriter) -> None:
    """The stake stays with the player; the market's other bettors see the same."""
    user = new_user()
    w.deposit(user, 1_000)
    market = f"m-{uuid.uuid4().hex[:8]}"
    suspend = market_body("suspend_market", market)
    send(w.client, w.key("trading"), suspend)
    assert wait_outcome(w.db, suspend["id"])["status"] == "accepted"
    bet = body("bet", user, amount=100, market=market, selection="home", odds="2.50")
    send(w.client, w.key("frontend"), bet)
    out = wait_outcome(w.db, bet["id"])
    assert (out["status"], out["reason"], out["balance"]) == (
        "rejected", "market_suspended", 1_000)
    w.assert_still_serving()
    assert balances(w.db)[user] == 1_000


def test_a_closed_market_takes_no_bet_and_no_suspension(w: RunningWriter) -> None:
    """A market settled as a whole is closed for good (its state as the ledger records it)."""
    user = new_user()
    w.deposit(user, 1_000)
    market = f"m-{uuid.uuid4().hex[:8]}"
    with sqlite3.connect(w.db) as conn:
        conn.execute("INSERT INTO markets(market, state, updated_seq) VALUES (?, 'closed', 0)",
                     (market,))
    bet = body("bet", user, amount=100, market=market, selection="home", odds="2.50")
    suspend = market_body("suspend_market", market)
    send(w.client, w.key("frontend"), bet)
    send(w.client, w.key("trading"), suspend)
    assert [(o["status"], o["reason"]) for o in (wait_outcome(w.db, i["id"])
                                                 for i in (bet, suspend))] == [
        ("rejected", "market_closed"), ("rejected", "market_closed")]
    w.assert_still_serving()
    assert balances(w.db)[user] == 1_000


def test_posting_a_hold_that_is_not_the_players_or_is_closed_is_refused(
        w: RunningWriter) -> None:
    """unknown_hold: no such hold for that user; hold_closed: posted, voided or expired."""
    user, other = new_user(), new_user()
    w.deposit(user, 1_000)
    w.deposit(other, 1_000)
    hold = body("withdrawal_hold", user, amount=300)
    send(w.client, w.key("payments"), hold)
    assert wait_outcome(w.db, hold["id"])["status"] == "accepted"
    stranger = body("withdrawal_post", other, hold_id=hold["id"])
    send(w.client, w.key("payments"), stranger)
    out = wait_outcome(w.db, stranger["id"])
    assert (out["status"], out["reason"], out["balance"]) == ("rejected", "unknown_hold", 1_000)
    void = body("withdrawal_void", user, hold_id=hold["id"])
    post = body("withdrawal_post", user, hold_id=hold["id"])
    send(w.client, w.key("payments"), void)
    send(w.client, w.key("payments"), post)
    assert wait_outcome(w.db, void["id"])["status"] == "accepted"
    out = wait_outcome(w.db, post["id"])
    assert (out["status"], out["reason"], out["balance"]) == ("rejected", "hold_closed", 1_000)
    w.assert_still_serving()
    assert balances(w.db)[user] == 1_000


def test_every_rejection_reason_is_covered_here() -> None:
    """Guard: a new reason in workers/core/decision.py must get a test in this module."""
    import sys

    source = open(sys.modules[__name__].__file__, encoding="utf-8").read()
    covered = {r for r in REASONS if f'"{r}"' in source}
    # duplicate is not a rejection outcome: a repeat gets its original outcome re-published.
    assert set(REASONS) - covered - {"duplicate"} == set()


def test_a_storm_of_bad_entries_does_not_stall_good_ones(w: RunningWriter) -> None:
    """Good intents interleaved with every kind of bad entry, all in one batch, are all
    decided; the bad ones are dead-lettered or rejected and the writer keeps serving."""
    user = new_user()
    w.deposit(user, 10_000)
    cashier, frontend = w.key("cashier"), w.key("frontend")
    good_ids = []
    pipe = w.client.pipeline(transaction=True)  # one MULTI: the writer reads one batch
    for _ in range(50):
        good = bet_body(user, 10)
        good_ids.append(good["id"])
        pipe.xadd(c.STREAM_INTENTS, entry_fields(frontend, encode_body(good)))
        pipe.xadd(c.STREAM_INTENTS, entry_fields(cashier, b"\x00\xff garbage"))
        pipe.xadd(c.STREAM_INTENTS, {"v": "1", "kid": "nobody", "body": b"{}", "sig": "0" * 64})
        pipe.xadd(c.STREAM_INTENTS, entry_fields(frontend, encode_body(body("deposit", user,
                                                                          amount=1))))
    pipe.execute()

    wait_for(lambda: drained(w.client) or w.errors, DEADLINE_S, "the batch to be finished")
    died, w.errors[:] = list(w.errors), []  # reported here, not again at teardown
    assert not died, f"the writer died: {died!r}"
    for intent_id in good_ids:
        assert outcomes_for(w.db, intent_id)[0]["status"] == "accepted"
    w.assert_still_serving()
    assert balances(w.db)[user] == 10_000 - 50 * 10
    reasons = json.dumps(sorted({d["reason"] for d in deadletters(w.client)}))
    assert reasons == json.dumps(["malformed", "unknown_kid"])


def test_one_forged_entry_next_to_a_deposit_does_not_kill_the_writer_process(
        procs: Procs, redis_client: redis.Redis, keyring: Keyring, env: dict[str, str]) -> None:
    """Anyone who can XADD one unsigned entry next to real traffic must not be able to stop
    the ledger: the deposit is confirmed, the junk dead-lettered, the writer keeps running.
    (Regression: a dead letter queued first in the post-commit MULTI once made every such
    batch crash the writer, on every restart.)"""
    writer = procs.start("writer")
    wait_for(lambda: drained(redis_client), 15, "the writer to create its group")
    deposit = body("deposit", new_user(), amount=100)
    pipe = redis_client.pipeline(transaction=True)  # both land in one batch
    pipe.xadd(c.STREAM_INTENTS, {"v": "1", "kid": "cashier", "body": b"{}", "sig": "0" * 64})
    pipe.xadd(c.STREAM_INTENTS, entry_fields(keyring.get("cashier"), encode_body(deposit)))
    pipe.execute()

    wait_for(lambda: writer.poll() is not None or drained(redis_client), DEADLINE_S,
             "the writer to finish the batch (or die)")
    log = Path(writer.log_path).read_text()[-600:]  # type: ignore[attr-defined]
    assert writer.poll() is None, f"the writer exited {writer.returncode}: {log}"
    assert wait_outcome(env["BETSTREAM_DB"], deposit["id"])["status"] == "accepted"
    assert [d["reason"] for d in deadletters(redis_client)] == ["bad_signature"]
    assert published(redis_client, deposit["id"], load_settings(db=env["BETSTREAM_DB"], redis_url=env["BETSTREAM_REDIS_URL"])), "the deposit was confirmed"


@pytest.mark.parametrize("claimed_by", ["admission child", "writer"])
def test_replays_and_resends_across_batches_read_ahead(
        start_writer: Callable[..., RunningWriter], monkeypatch: pytest.MonkeyPatch,
        claimed_by: str) -> None:
    """Under a backlog the next batch is read, admitted and its nonces claimed (by the
    admission child, or on the writer's I/O thread) while this one commits: a replay of a
    nonce claimed one batch earlier is still refused, a re-sent copy still gets its
    original outcome, and nothing is applied twice."""
    from workers.writer.admission_child import Admitter
    from workers.writer.nonce_claims import NonceClaimer
    early_claims = []
    start, collect = NonceClaimer.start, Admitter.collect
    monkeypatch.setattr(
        NonceClaimer, "start",
        lambda self, cands: early_claims.append("writer") or start(self, cands))
    monkeypatch.setattr(Admitter, "collect", lambda self, *a: (
        got := collect(self, *a)) and got.claims and early_claims.append("admission child")
        or got)
    w = start_writer(batch_size_max=4, admission_process=claimed_by == "admission child")
    users = [new_user() for _ in range(4)]
    deposits = [body("deposit", u, amount=1_000) for u in users]
    bets = [bet_body(u, 100) for u in users]
    replay_deposit = {**deposits[1], "id": str(uuid.uuid4())}  # nonce of batch 1, new id
    replay_bet = {**bet_body(users[2], 100), "nonce": bets[0]["nonce"]}  # nonce of batch 2
    cashier, frontend = w.key("cashier"), w.key("frontend")
    stream = ([(cashier, b) for b in deposits] + [(frontend, b) for b in bets]
              + [(cashier, replay_deposit), (cashier, deposits[3]), (frontend, replay_bet),
                 (cashier, body("deposit", users[0], amount=5))])
    pipe = w.client.pipeline(transaction=True)  # one MULTI: a backlog of three full batches
    for key, b in stream:
        pipe.xadd(c.STREAM_INTENTS, entry_fields(key, encode_body(b)))
    pipe.execute()

    for b in (replay_deposit, replay_bet):
        out = wait_outcome(w.db, b["id"])
        assert (out["status"], out["reason"]) == ("rejected", "replay")
    resent = wait_outcome(w.db, deposits[3]["id"])
    assert resent["status"] == "accepted"
    wait_for(lambda: drained(w.client), DEADLINE_S, "the backlog to be acknowledged")
    assert claimed_by in early_claims, "no batch was read ahead and claimed early there"
    assert len(outcomes_for(w.db, deposits[3]["id"])) == 1  # the copy got no second outcome
    assert [balances(w.db)[u] for u in users] == [905, 900, 900, 900]
    assert all(ledger_rows(w.db, b["id"]) == 0 for b in (replay_deposit, replay_bet))


def test_a_new_user_who_stakes_all_of_a_deposit_in_one_batch_still_has_an_account(
        w: RunningWriter) -> None:
    """Regression (found by CI under load, there since the first commit): a new user whose
    postings in one batch net to zero (a deposit staked in full) got ledger rows but no
    ``users`` row, and the audit found a balance that did not match its ledger."""
    from workers.adapters.ledger_audit import audit
    user = new_user()
    deposit, stake = body("deposit", user, amount=1_000), bet_body(user, 1_000)
    pipe = w.client.pipeline(transaction=True)  # one MULTI: one batch
    pipe.xadd(c.STREAM_INTENTS, entry_fields(w.key("cashier"), encode_body(deposit)))
    pipe.xadd(c.STREAM_INTENTS, entry_fields(w.key("frontend"), encode_body(stake)))
    pipe.execute()

    out = wait_outcome(w.db, stake["id"])
    assert (out["status"], out["balance"]) == ("accepted", 0)
    assert query(w.db, "SELECT balance FROM users WHERE id = ?", (user,)) == [(0,)]
    failed = [check for check in audit(w.db) if not check.ok]
    assert not failed, failed
