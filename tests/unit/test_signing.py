"""Keyring loading, HMAC-SHA256 signatures and per-key kind permissions (producer/signing.py).

These protect authentication: only a holder of a key's secret can produce an entry the
writer accepts, a key signs only the kinds its keyring entry allows, and a broken keyring
stops the process with a clear KeyringError instead of running half-configured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import fakeredis
import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.client import Producer, entry_fields, pack_xadd
from producer.errors import AuthError, ConfigError, ContractError, ForbiddenKind, KeyringError
from producer.signing import (
    KID_LEN_MAX,
    SECRET_LEN_MIN,
    Key,
    Keyring,
    check_kind,
    sign,
    verify,
)

RING = {
    "frontend": {"secret": "frontend-test-secret-0001", "kinds": ["bet"]},
    "cashier": {"secret": "cashier-test-secret-00001", "kinds": ["deposit", "withdrawal"]},
    "settlement": {"secret": "settlement-test-secret-01", "kinds": ["settle"]},
    "ops": {"secret": "ops-secret-ünïcode-000001", "kinds": ["settle", "deposit"]},
}
BODY = b'{"amount":250,"id":"0b6f3c2e-8d4a-4f7e-9a1b-2c3d4e5f6a7b","kind":"bet"}'


@pytest.fixture
def ring() -> Keyring:
    return Keyring.from_mapping(RING)


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "keyring.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --- keyring loading -------------------------------------------------------------------


def test_keyring_loads_from_a_json_file(tmp_path: Path) -> None:
    """A well-formed keyring file yields every key with its UTF-8 secret bytes and kinds."""
    ring = Keyring.load(write(tmp_path, json.dumps(RING)))
    assert len(ring) == 4 and "cashier" in ring and "nobody" not in ring
    ops = ring.get("ops")
    assert ops.secret == "ops-secret-ünïcode-000001".encode("utf-8")
    assert ops.kinds == frozenset({"settle", "deposit"})
    assert ring.kids_for("deposit") == ["cashier", "ops"]
    assert ring.kids_for("bet") == ["frontend"]
    assert ring.kids_for("transfer") == []


def test_missing_keyring_file_is_a_keyring_error(tmp_path: Path) -> None:
    """A missing file stops start-up with a message naming the path."""
    missing = tmp_path / "nope.json"
    with pytest.raises(KeyringError, match="not found") as info:
        Keyring.load(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("content", [
    "", "{", "not json", '{"a": }', b"\xff\xfe{}",
])
def test_unparseable_keyring_file_is_a_keyring_error(tmp_path: Path, content: str | bytes) -> None:
    """Bad JSON or bad UTF-8 is a KeyringError, not a traceback."""
    with pytest.raises(KeyringError, match="unreadable"):
        Keyring.load(write(tmp_path, content))


def test_keyring_path_that_is_a_directory_is_a_keyring_error(tmp_path: Path) -> None:
    """An unreadable path (here a directory) is reported as a KeyringError."""
    with pytest.raises(KeyringError):
        Keyring.load(tmp_path)


@pytest.mark.parametrize("raw", [{}, [], None, "keys", 1, [["frontend", RING["frontend"]]]])
def test_keyring_must_be_a_non_empty_object(tmp_path: Path, raw: object) -> None:
    """The top level must be a non-empty object of key ids (an empty ring authenticates nobody)."""
    with pytest.raises(KeyringError, match="non-empty JSON object"):
        Keyring.load(write(tmp_path, json.dumps(raw)))


@pytest.mark.parametrize("entry,words", [
    ("secret", "kid"),
    (None, "kid"),
    ([], "kid"),
    ({"kinds": ["bet"]}, "required"),
    ({"secret": "s" * 32}, "required"),
    ({"secret": "s" * (SECRET_LEN_MIN - 1), "kinds": ["bet"]}, "16"),
    ({"secret": "", "kinds": ["bet"]}, "kid"),
    ({"secret": 1234567890123456789, "kinds": ["bet"]}, "string"),
    ({"secret": "s" * 32, "kinds": []}, "kid"),
    ({"secret": "s" * 32, "kinds": "bet"}, "list"),
    ({"secret": "s" * 32, "kinds": [1]}, "string"),
    ({"secret": "s" * 32, "kinds": ["bet"], "admin": True}, "kid"),
    ({"secret": "s" * 32, "kinds": ["bet", "transfer"]}, "transfer"),
    ({"secret": "s" * 32, "kinds": ["BET"]}, "BET"),
])
def test_bad_keyring_entries_are_keyring_errors(entry: object, words: str) -> None:
    """Each bad entry is refused, naming the key id (and the offending value when useful)."""
    with pytest.raises(KeyringError) as info:
        Keyring.from_mapping({"kid": entry})
    msg = str(info.value)
    assert "'kid'" in msg
    assert words in msg, msg


@pytest.mark.parametrize("missing", ["secret", "kinds"])
def test_missing_keyring_field_is_named_in_the_error(missing: str) -> None:
    """An operator told 'Field required' must also be told which field."""
    entry = {"secret": "s" * 32, "kinds": ["bet"]}
    del entry[missing]
    with pytest.raises(KeyringError, match=missing):
        Keyring.from_mapping({"frontend": entry})


def test_unknown_kinds_are_named_in_the_error() -> None:
    """A typo in a kind is caught at load time, not when the first intent is refused."""
    with pytest.raises(KeyringError, match=r"unknown kinds \['bets'\]"):
        Keyring.from_mapping({"frontend": {"secret": "s" * 16, "kinds": ["bets"]}})


@pytest.mark.parametrize("kid", ["", "k" * (KID_LEN_MAX + 1)])
def test_key_ids_must_be_1_to_64_characters(kid: str) -> None:
    """Key ids are short names (they are stored in every stream entry)."""
    with pytest.raises(KeyringError, match="key id"):
        Keyring.from_mapping({kid: {"secret": "s" * 32, "kinds": ["bet"]}})


def test_minimal_valid_entry_is_accepted() -> None:
    """A 16-character secret and one kind is the smallest acceptable entry; 64-char ids work."""
    kid = "k" * KID_LEN_MAX
    ring = Keyring.from_mapping({kid: {"secret": "s" * SECRET_LEN_MIN, "kinds": ["bet"]}})
    assert ring.get(kid).kinds == frozenset({"bet"})


def test_key_repr_never_leaks_the_secret(ring: Keyring) -> None:
    """Logging a key (repr, str, f-string, inside containers or errors) never prints the secret."""
    key = ring.get("cashier")
    secret = RING["cashier"]["secret"]
    texts = [repr(key), str(key), f"{key}", repr([key]), repr({"k": key}), repr(ring)]
    for text in texts:
        assert secret not in text and secret.encode().hex() not in text
        assert repr(secret.encode()) not in text
    assert "cashier" in repr(key) and "deposit" in repr(key)


# --- sign / verify ---------------------------------------------------------------------


def test_sign_matches_the_published_hmac_sha256_test_vector() -> None:
    """Other languages can interoperate: sign() is plain lowercase-hex HMAC-SHA256."""
    key = Key("k", b"key", frozenset({"bet"}))
    assert sign(key, b"The quick brown fox jumps over the lazy dog") == \
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


@settings(max_examples=500, deadline=None)
@given(secret=st.binary(min_size=1, max_size=200), body=st.binary(max_size=3000))
def test_sign_equals_stdlib_hmac_for_any_key_and_body(secret: bytes, body: bytes) -> None:
    """sign() builds HMAC from precomputed pad states: it must equal the stdlib's HMAC for
    keys shorter than, equal to and longer than the 64-byte block (long keys are hashed)."""
    key = Key("k", secret, frozenset({"bet"}))
    assert sign(key, body) == hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert sign(key, body) == sign(key, body)  # the pad states are copied, never consumed


def test_sign_matches_stdlib_hmac_at_the_block_size_edges() -> None:
    for size in (63, 64, 65, 128):
        secret = bytes(range(size))
        assert sign(Key("k", secret, frozenset({"bet"})), BODY) == \
            hmac.new(secret, BODY, hashlib.sha256).hexdigest()


def test_signature_uses_the_utf8_bytes_of_the_secret(ring: Keyring) -> None:
    """The HMAC key is the secret's UTF-8 bytes, as docs/wire-contract.md says."""
    expected = hmac.new(RING["ops"]["secret"].encode("utf-8"), BODY, hashlib.sha256).hexdigest()
    assert sign(ring.get("ops"), BODY) == expected


@pytest.mark.parametrize("kid", sorted(RING))
def test_sign_then_verify_round_trips(ring: Keyring, kid: str) -> None:
    """An entry signed with a keyring key verifies and returns that key."""
    key = ring.get(kid)
    sig = sign(key, BODY)
    assert len(sig) == 64 and sig == sig.lower()
    assert verify(ring, kid, BODY, sig) is key


def bad_signature(ring: Keyring, kid: str, body: bytes, sig: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(ring, kid, body, sig)
    assert info.value.reason == "bad_signature", str(info.value)
    return info.value


def test_any_single_character_change_of_the_signature_is_refused(ring: Keyring) -> None:
    """A forged signature fails, however close to the real one."""
    sig = sign(ring.get("frontend"), BODY)
    for i in range(len(sig)):
        flipped = sig[:i] + ("0" if sig[i] != "0" else "1") + sig[i + 1:]
        bad_signature(ring, "frontend", BODY, flipped)


def test_any_change_of_the_body_is_refused(ring: Keyring) -> None:
    """The signature covers the stored bytes exactly (even whitespace or key order)."""
    sig = sign(ring.get("frontend"), BODY)
    variants = [BODY + b" ", b" " + BODY, BODY.replace(b"250", b"251"),
                BODY.replace(b'"amount":250,', b"") [:-1] + b',"amount":250}',
                BODY.replace(b":", b": "), b""]
    for body in variants:
        assert body != BODY
        bad_signature(ring, "frontend", body, sig)


def test_signature_from_another_key_is_refused(ring: Keyring) -> None:
    """A valid signature by one key does not authenticate the entry under another kid."""
    sig = sign(ring.get("cashier"), BODY)
    bad_signature(ring, "frontend", BODY, sig)
    outsider = Key("frontend", b"a-guessed-secret-value", frozenset({"bet"}))
    bad_signature(ring, "frontend", BODY, sign(outsider, BODY))


@pytest.mark.parametrize("mangle", [
    lambda s: s[:-1], lambda s: s[:32], lambda s: s + "0", lambda s: "", lambda s: s.upper(),
    lambda s: s[:-2] + "zz", lambda s: " " + s[1:], lambda s: s[:-1] + "é",
    lambda s: bytes.fromhex(s).decode("latin-1"),
])
def test_malformed_signatures_are_bad_signature(ring: Keyring, mangle) -> None:
    """Truncated, padded, uppercase, non-hex or raw-byte signatures are refused (not crashes)."""
    sig = sign(ring.get("frontend"), BODY)
    mangled = mangle(sig)
    assert mangled != sig
    bad_signature(ring, "frontend", BODY, mangled)


@pytest.mark.parametrize("kid", ["nobody", "", "FRONTEND", "frontend ", "x" * 10_000])
def test_unknown_kid_is_refused(ring: Keyring, kid: str) -> None:
    """Entries under a key id that is not in the keyring fail with reason unknown_kid."""
    with pytest.raises(AuthError) as info:
        verify(ring, kid, BODY, sign(ring.get("frontend"), BODY))
    assert info.value.reason == "unknown_kid"
    assert len(str(info.value)) < 200  # a hostile kid is not echoed in full


def test_check_kind_allows_only_the_keys_kinds(ring: Keyring) -> None:
    """Front-end keys may only sign bets; cashier keys only deposits and withdrawals."""
    check_kind(ring.get("frontend"), "bet")
    check_kind(ring.get("cashier"), "withdrawal")
    for kid, kind in [("frontend", "deposit"), ("frontend", "settle"), ("cashier", "bet"),
                      ("settlement", "withdrawal"), ("frontend", "transfer")]:
        with pytest.raises(ForbiddenKind) as info:
            check_kind(ring.get(kid), kind)
        assert info.value.reason == "forbidden_kind"
        assert isinstance(info.value, ContractError)
        assert kid in str(info.value) and kind in str(info.value)


# --- producer key selection --------------------------------------------------------------


def test_producer_picks_a_key_allowed_for_each_kind(ring: Keyring) -> None:
    """Without configuration the producer signs each kind with the first key allowed to."""
    producer = Producer(fakeredis.FakeRedis(), ring)
    assert producer.key_for("bet").kid == "frontend"
    assert producer.key_for("deposit").kid == "cashier"
    assert producer.key_for("withdrawal").kid == "cashier"
    assert producer.key_for("settle").kid == "ops"


def test_producer_uses_the_configured_key(ring: Keyring) -> None:
    """An explicit kid per kind is honoured when that key may sign the kind."""
    producer = Producer(fakeredis.FakeRedis(), ring, kids={"settle": "settlement"})
    assert producer.key_for("settle").kid == "settlement"


def test_producer_refuses_a_configured_key_that_may_not_sign_the_kind(ring: Keyring) -> None:
    """Misconfiguring a front-end key for deposits is refused before anything is sent."""
    producer = Producer(fakeredis.FakeRedis(), ring, kids={"deposit": "frontend"})
    with pytest.raises(ForbiddenKind):
        producer.key_for("deposit")


def test_producer_refuses_kinds_no_key_may_sign() -> None:
    """With only a front-end key, a deposit cannot be signed at all (ForbiddenKind)."""
    ring = Keyring.from_mapping({"frontend": RING["frontend"]})
    producer = Producer(fakeredis.FakeRedis(), ring)
    assert producer.key_for("bet").kid == "frontend"
    for kind in ("deposit", "withdrawal", "settle"):
        with pytest.raises(ForbiddenKind, match=kind):
            producer.key_for(kind)


def test_entry_fields_are_exactly_the_wire_contract(ring: Keyring) -> None:
    """A stream entry has exactly v, kid, body, sig, with the signature over the body bytes."""
    key = ring.get("frontend")
    fields = entry_fields(key, BODY)
    assert fields == {"v": "1", "kid": "frontend", "body": BODY, "sig": sign(key, BODY)}
    assert verify(ring, fields["kid"], fields["body"], fields["sig"]) is key


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.dictionaries(st.one_of(st.text(), st.binary()),
                                            st.one_of(st.text(), st.binary()), max_size=6))
def test_the_producers_own_xadd_packing_equals_hiredis(
        stream: str, fields: dict[str | bytes, str | bytes]) -> None:
    """The producer packs its XADDs itself (one ``%`` per field, not sprintf per argument):
    the same bytes on the wire as hiredis, whatever the stream, field names and values
    (``%`` and non-ASCII text included)."""
    args = ("XADD", stream, "*", *[part for pair in fields.items() for part in pair])
    assert pack_xadd(stream, fields) == hiredis.pack_command(args)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.text(), st.text(), st.binary(), st.text())
def test_an_entry_packs_as_hiredis_would_on_its_short_path(
        stream: str, version: str, kid: str, body: bytes, sig: str) -> None:
    """An entry shaped as ``entry_fields`` makes it takes its own packing path (one ``%``
    after a cached head): the same bytes as hiredis too, non-ASCII text included."""
    fields = {"v": version, "kid": kid, "body": body, "sig": sig}
    args = ("XADD", stream, "*", *[part for pair in fields.items() for part in pair])
    assert pack_xadd(stream, fields) == hiredis.pack_command(args)
