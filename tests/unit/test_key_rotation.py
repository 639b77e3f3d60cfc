"""Key rotation: keyring ``retire_at``, refusal by ingress time, producers that move on,
a SIGHUP reload that keeps the old keyring when the new file is bad, and constant-time
comparisons (hmac.compare_digest) for every secret-derived value.

The retirement check compares the stream entry's ingress time (its id), never the signed
``issued_at``: whoever holds a retired key could backdate ``issued_at`` at will.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

import fakeredis
import pytest

from producer.client import Producer, entry_fields
from producer.contract import intent_body, new_bet, new_deposit, now_ms
from producer.errors import AuthError, ForbiddenKind, KeyRetired, KeyringError
from producer.signing import RETIRE_MARGIN_MS, Keyring, sign, verify
from workers.adapters import subscriber_tokens as tokens
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter, admit
from workers.writer.keyring_reload import KeyringReloader

RETIRE_AT = 1_700_000_000_000
RING = {
    "frontend": {"secret": "frontend-test-secret-0001", "kinds": ["bet"],
                 "retire_at": RETIRE_AT},
    "frontend-2": {"secret": "frontend-test-secret-0002", "kinds": ["bet"]},
    "cashier": {"secret": "cashier-test-secret-00001", "kinds": ["deposit", "withdrawal"]},
}


def raw_fields(kid: str, body: bytes, sig: str | None = None) -> dict[bytes, bytes]:
    ring = Keyring.from_mapping(RING)
    f = entry_fields(ring.get(kid), body)
    if sig is not None:
        f["sig"] = sig
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in f.items()}


def bet_at(issued_at: int) -> bytes:
    intent = new_bet(7, 100, "final", "home", "2.50").model_copy(update={"issued_at": issued_at})
    return intent_body(intent)


# --- keyring format ----------------------------------------------------------------------


def test_retire_at_is_optional_and_loaded() -> None:
    """Old keyrings (no retire_at) load unchanged; retire_at is ms since the epoch."""
    ring = Keyring.from_mapping(RING)
    assert ring.get("frontend").retire_at == RETIRE_AT
    assert ring.get("frontend-2").retire_at is None
    assert "retire_at=1700000000000" in repr(ring.get("frontend"))


@pytest.mark.parametrize("value", [-1, True, "1700000000000", 1.7e12, 2**53, [1]])
def test_bad_retire_at_is_a_keyring_error(value: object) -> None:
    """Only a non-negative JSON integer is a retirement time (no bool, string or float)."""
    with pytest.raises(KeyringError, match="retire_at"):
        Keyring.from_mapping({"k": {"secret": "s" * 16, "kinds": ["bet"], "retire_at": value}})


# --- verify / admit: by ingress time -----------------------------------------------------


def test_verify_accepts_before_and_refuses_from_retire_at() -> None:
    """Retirement is inclusive: an entry ingested at retire_at or later is refused."""
    ring = Keyring.from_mapping(RING)
    body = bet_at(RETIRE_AT)
    sig = sign(ring.get("frontend"), body)
    assert verify(ring, "frontend", body, sig, at_ms=RETIRE_AT - 1).kid == "frontend"
    for at in (RETIRE_AT, RETIRE_AT + 1, RETIRE_AT + 10**9):
        with pytest.raises(KeyRetired) as info:
            verify(ring, "frontend", body, sig, at_ms=at)
        assert info.value.reason == "retired_key" and str(RETIRE_AT) in str(info.value)
    assert verify(ring, "frontend", body, sig).kid == "frontend"  # no time given: no check


def test_a_forgery_under_a_retired_kid_is_still_bad_signature() -> None:
    """retired_key tells operators a genuine producer lags behind; forgeries stay forgeries."""
    ring = Keyring.from_mapping(RING)
    body = bet_at(RETIRE_AT)
    with pytest.raises(AuthError) as info:
        verify(ring, "frontend", body, sign(ring.get("frontend-2"), body), at_ms=RETIRE_AT + 5)
    assert info.value.reason == "bad_signature"


def test_admit_compares_the_ingress_time_not_issued_at() -> None:
    """A backdated issued_at does not help after retirement; a redelivery of an entry that
    reached the stream before retire_at is admitted again (same result every delivery)."""
    ring = Keyring.from_mapping(RING)
    backdated = bet_at(RETIRE_AT - 30_000)
    late = admit(f"{RETIRE_AT + 1}-0", raw_fields("frontend", backdated), ring)
    assert isinstance(late, DeadLetter) and late.reason == "retired_key"
    assert late.kid == "frontend"
    early = admit(f"{RETIRE_AT - 1}-3", raw_fields("frontend", bet_at(RETIRE_AT + 30_000)), ring)
    assert isinstance(early, Candidate) and early.pre_reason is None
    fresh = admit(f"{RETIRE_AT + 1}-0", raw_fields("frontend-2", backdated), ring)
    assert isinstance(fresh, Candidate) and fresh.kid == "frontend-2"


# --- producers ---------------------------------------------------------------------------


def test_producer_moves_to_the_key_that_does_not_retire() -> None:
    """As soon as the old key has a retire_at, new intents are signed with the new key."""
    ring = Keyring.from_mapping({**RING, "frontend": {**RING["frontend"],
                                                      "retire_at": now_ms() + 3_600_000}})
    assert Producer(fakeredis.FakeRedis(), ring).key_for("bet").kid == "frontend-2"


def test_producer_refuses_a_configured_retired_key() -> None:
    """An explicitly configured key that is retired (or about to be) is a clear error."""
    for retire_at in (now_ms() - 1, now_ms() + RETIRE_MARGIN_MS // 2):
        ring = Keyring.from_mapping({**RING, "frontend": {**RING["frontend"],
                                                          "retire_at": retire_at}})
        producer = Producer(fakeredis.FakeRedis(), ring, kids={"bet": "frontend"})
        with pytest.raises(KeyRetired, match="'frontend' retired at"):
            producer.submit(new_bet(7, 1, "m", "s", "2.00"))
        assert producer._redis.xlen("betstream:intents") == 0  # nothing was sent


def test_producer_with_only_retired_keys_says_so() -> None:
    ring = Keyring.from_mapping({"frontend": RING["frontend"], "cashier": RING["cashier"]})
    producer = Producer(fakeredis.FakeRedis(), ring)
    with pytest.raises(KeyRetired, match="every key that may sign 'bet'"):
        producer.key_for("bet")
    with pytest.raises(ForbiddenKind):
        producer.key_for("settle")
    assert producer.key_for("deposit").kid == "cashier"
    producer.submit(new_deposit(7, 5))


# --- reload ------------------------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def info(self, event: str, **kw: object) -> None:
        self.lines.append(("info", event, kw))

    def error(self, event: str, **kw: object) -> None:
        self.lines.append(("error", event, kw))


def test_reload_only_on_request_and_bad_files_keep_the_old_keyring(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps({"frontend": RING["frontend-2"]}))
    log = Log()
    reloader = KeyringReloader(path, log)
    first = reloader.current()
    path.write_text(json.dumps(RING))
    assert reloader.current() is first, "no request, no reload"
    reloader.request()
    assert reloader.current().kids() == ["cashier", "frontend", "frontend-2"]
    assert log.lines[-1][:2] == ("info", "keyring.reloaded")
    assert log.lines[-1][2]["retiring"] == {"frontend": RETIRE_AT}
    good = reloader.current()
    for bad in ("{", "", json.dumps({"x": {"secret": "short", "kinds": ["bet"]}}), "[]"):
        path.write_text(bad)
        reloader.request()
        assert reloader.current() is good
        level, event, fields = log.lines[-1]
        assert (level, event) == ("error", "keyring.reload_refused") and fields["error"]
        assert fields["kids"] == ["cashier", "frontend", "frontend-2"]
    path.unlink()
    reloader.request()
    assert reloader.current() is good and "not found" in log.lines[-1][2]["error"]
    text = repr(log.lines)
    for entry in RING.values():
        assert entry["secret"] not in text


def test_keyring_errors_do_not_quote_the_secrets(tmp_path: Path) -> None:
    """Regression: a keyring saved in Latin-1 was refused with Python's own message, which
    quotes the offending byte ("can't decode byte 0xe9"): a byte of the secret, in a log."""
    path = tmp_path / "keyring.json"
    secret = "s3cr\u00e9t-value-abcdefgh"
    variants = [
        f'{{"frontend": {{"secret": "{secret}", "kinds": ["bet"]}}}}'.encode("latin-1"),
        f'{{"frontend": {{"secret": "{secret}", "kinds": ["bet"]}}, }}'.encode(),
        f'{{"frontend": {{"secret": "{secret}" "kinds": ["bet"]}}}}'.encode(),
        f'{{"frontend": {{"secret": ["{secret}"], "kinds": ["bet"]}}}}'.encode(),
        f'{{"frontend": {{"secret": "{secret}", "kinds": ["bet"], "retire_at": "x"}}}}'.encode(),
    ]
    for raw in variants:
        path.write_bytes(raw)
        with pytest.raises(KeyringError) as info:
            Keyring.load(path)
        msg = str(info.value)
        assert "s3cr" not in msg and "0xe9" not in msg and "\\xe9" not in msg, msg
    assert "not UTF-8 (invalid byte at offset 29)" in str(
        pytest.raises(KeyringError, Keyring.load, _write(path, variants[0])).value)


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


# --- constant-time comparison ------------------------------------------------------------


def test_signature_and_token_checks_use_hmac_compare_digest(monkeypatch) -> None:
    """Every secret-derived comparison goes through hmac.compare_digest (no ``==``), so a
    forger learns nothing from timing. Spied, not timed: timing tests are flaky."""
    calls: list[tuple[bytes | str, bytes | str]] = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    ring = Keyring.from_mapping(RING)
    body = bet_at(RETIRE_AT)
    good = sign(ring.get("frontend-2"), body)
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")
    verify(ring, "frontend-2", body, good)
    with pytest.raises(AuthError):
        verify(ring, "frontend-2", body, forged)
    assert [b for _, b in calls] == [good.encode(), forged.encode()]
    secret = b"g" * 32
    token = tokens.issue(secret, 7, 60)
    calls.clear()
    assert tokens.verify(secret, token) == 7
    with pytest.raises(tokens.TokenError):
        tokens.verify(secret, token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert len(calls) == 2
