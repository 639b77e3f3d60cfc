"""Hostile stream entries, each with the exact result the writer must give it.

A builder takes a seeded ``random.Random`` and returns a :class:`Case`: the raw entry
fields (bytes, as redis-py reads them back) and the expected result, one of
``dead:<reason>`` (dead-lettered), ``invalid`` / ``forbidden_kind`` (an outcome for the
user) or ``ok`` (a valid intent, admitted). The expectations are written down from the wire
contract, not computed by the code under test.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from producer.contract import BODY_BYTES_MAX
from producer.signing import Key, Keyring, sign

RETIRED_AT: Final = 1_600_000_000_000  # long past: every entry ingested now is too late
KEYRING: Final = {
    "frontend": {"secret": "frontend-test-secret-0001", "kinds": ["bet"]},
    "cashier": {"secret": "cashier-test-secret-00001", "kinds": ["deposit", "withdrawal"]},
    "settlement": {"secret": "settlement-test-secret-01", "kinds": ["settle"]},
    "retired": {"secret": "retired-test-secret-00001", "kinds": ["bet", "deposit"],
                "retire_at": RETIRED_AT},
    "retiring": {"secret": "retiring-test-secret-0001", "kinds": ["deposit"],
                 "retire_at": 2**53 - 1},
}
RING: Final = Keyring.from_mapping(KEYRING)
FUNDED_USER: Final = 424_242  # the stream test deposits enough for every "ok" bet first
KIND_KEY: Final = {"bet": "frontend", "deposit": "cashier", "withdrawal": "cashier",
                   "settle": "settlement"}


@dataclass(frozen=True)
class Case:
    category: str
    fields: dict[bytes, bytes]
    expect: str


def uid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def body_dict(rnd: random.Random, kind: str, now: int, user_id: int | None = None) -> dict:
    base: dict[str, Any] = {"id": uid(rnd), "kind": kind,
                            "user_id": user_id or rnd.randrange(1, 2**53),
                            "nonce": f"{rnd.getrandbits(128):032x}", "issued_at": now}
    if kind in ("deposit", "withdrawal"):
        base["amount"] = rnd.randrange(1, 10**6)
    if kind == "bet":
        base.update(amount=1, market="final", selection="home", odds="2.50",
                    user_id=user_id or FUNDED_USER)
    if kind == "settle":
        base.update(bet_id=uid(rnd), outcome="lost")
    return base


def encode(raw: Any, ascii_only: bool = False) -> bytes:
    return json.dumps(raw, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def entry(body: bytes, kid: str, sig: str | None = None, key: Key | None = None,
          **extra: bytes) -> dict[bytes, bytes]:
    signer = key or RING.get(kid)
    return {b"v": b"1", b"kid": kid.encode("utf-8", "surrogatepass"), b"body": body,
            b"sig": (sig if sig is not None else sign(signer, body)).encode("utf-8"), **extra}


def signed(kind: str, raw: dict | bytes, kid: str | None = None) -> dict[bytes, bytes]:
    body = raw if isinstance(raw, bytes) else encode(raw)
    return entry(body, kid or KIND_KEY[kind])


# --- framing -----------------------------------------------------------------------------


def missing_fields(rnd: random.Random, now: int) -> Case:
    f = signed("deposit", body_dict(rnd, "deposit", now))
    for name in rnd.sample(sorted(f), rnd.randint(1, 3)):  # XADD needs one field
        del f[name]
    return Case("missing fields", f, "dead:malformed")


def extra_fields(rnd: random.Random, now: int) -> Case:
    f = signed("deposit", body_dict(rnd, "deposit", now))
    for _ in range(rnd.randint(1, 3)):
        name = rnd.choice([b"V", b"kid ", b"sig2", b"\xff", b"", b"body\x00", b"x" * 300,
                           rnd.randbytes(rnd.randint(1, 8))])
        if name not in (b"v", b"kid", b"body", b"sig"):
            f[name] = rnd.choice([b"", b"1", rnd.randbytes(16)])
    expect = "dead:malformed" if len(f) > 4 else "ok"
    return Case("extra fields", f, expect)


def bad_version(rnd: random.Random, now: int) -> Case:
    f = signed("deposit", body_dict(rnd, "deposit", now))
    f[b"v"] = rnd.choice([b"2", b"", b"1 ", b"01", b"\xff", b"v1", b"1\x00", b"0", b"1.0"])
    return Case("wrong wire version", f, "dead:unsupported_version")


def huge_body(rnd: random.Random, now: int) -> Case:
    size = rnd.choice([BODY_BYTES_MAX + 1, rnd.randint(BODY_BYTES_MAX + 1, 65_536)])
    raw = body_dict(rnd, "deposit", now)
    raw["pad"] = "x" * size
    body = rnd.choice([encode(raw), rnd.randbytes(size), b"[" * size])
    kid = rnd.choice(["cashier", "nobody", "\udcff"])  # too_large is decided first
    return Case("huge body", entry(body, kid, key=RING.get("cashier")), "dead:too_large")


def invalid_utf8(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "bet", now)
    bad = rnd.choice([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80",
                      b"\xe2\x82"])
    where = rnd.choice(["market", "top"])
    body = encode(raw)
    if where == "market":
        body = body.replace(b'"final"', b'"fi' + bad + b'nal"')
    else:
        body = bad + body
    # The identity is read with Python's json.loads, which refuses these bytes too.
    return Case("invalid UTF-8 body", signed("bet", body), "dead:malformed")


def encoded_surrogate(rnd: random.Random, now: int) -> Case:
    """CESU-style surrogate bytes: not UTF-8, so the intent is refused; its identity is
    still readable (json.loads decodes bytes with surrogatepass), so the user is told."""
    body = encode(body_dict(rnd, "bet", now)).replace(b'"final"', b'"fi\xed\xa0\x80nal"')
    return Case("encoded surrogate", signed("bet", body), "invalid")


def json_bomb(rnd: random.Random, now: int) -> Case:
    depth = rnd.randint(1_000, 1_900)
    shape = rnd.choice(["whole", "market"])
    if shape == "whole":
        return Case("JSON bomb", signed("bet", b"[" * depth + b"]" * depth), "dead:malformed")
    body = encode(body_dict(rnd, "bet", now)).replace(
        b'"final"', b"[" * depth + b"]" * depth)
    return Case("JSON bomb", signed("bet", body), "dead:malformed")  # identity unreadable


def shallow_nesting(rnd: random.Random, now: int) -> Case:
    depth = rnd.randint(1, 300)
    opener, closer = rnd.choice([(b"[", b"]"), (b'{"a":', b"}")])
    inner = opener * depth + b"1" + closer * depth
    body = encode(body_dict(rnd, "bet", now)).replace(b'"final"', inner)
    return Case("nested value", signed("bet", body), "invalid")


def nan_inf(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "deposit", now)
    token = rnd.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
    field = rnd.choice(["amount", "issued_at", "user_id"])
    body = encode(raw).replace(f'"{field}":{raw[field]}'.encode(), f'"{field}":{token}'.encode())
    return Case("NaN/Infinity", signed("deposit", body),
                "dead:malformed" if field == "user_id" else "invalid")


BAD_AMOUNTS: Final = [0, -1, -(2**63), 2**63, 2**63 - 1, 2**64 + 1, 10**15 + 1, 10**40,
                      1.0, 5.5, -0.0, True, False, "5", None, [5], {"v": 5}, 1e2]


def bad_amount(rnd: random.Random, now: int) -> Case:
    kind = rnd.choice(["deposit", "withdrawal", "bet"])
    raw = body_dict(rnd, kind, now)
    raw["amount"] = rnd.choice(BAD_AMOUNTS)
    return Case("bad amount", signed(kind, raw), "invalid")


def good_amount(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "deposit", now)
    raw["amount"] = rnd.choice([1, 10**15, rnd.randrange(1, 10**15)])
    return Case("boundary amount", signed("deposit", raw), "ok")


def bad_identity(rnd: random.Random, now: int) -> Case:
    """Without a usable id, kind and user id nobody can be told: dead letter."""
    raw = body_dict(rnd, "deposit", now)
    field, value = rnd.choice([
        ("user_id", 0), ("user_id", -1), ("user_id", 2**53), ("user_id", 2**63),
        ("user_id", 2**64), ("user_id", 10**30), ("user_id", True), ("user_id", "7"),
        ("user_id", 7.0), ("user_id", None), ("id", 12), ("id", None), ("id", ["x"]),
        ("id", "A" + raw["id"][1:].upper()), ("id", "{" + raw["id"] + "}"), ("id", raw["id"][:-1]),
        ("kind", "DEPOSIT"), ("kind", " deposit"), ("kind", "transfer"), ("kind", ["deposit"]),
        ("kind", {"k": 1}), ("kind", 1), ("kind", None)])
    raw[field] = value
    return Case("unusable identity", signed("deposit", raw), "dead:malformed")


def missing_identity(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "deposit", now)
    del raw[rnd.choice(["id", "kind", "user_id"])]
    return Case("identity field missing", signed("deposit", raw), "dead:malformed")


def not_an_object(rnd: random.Random, now: int) -> Case:
    body = rnd.choice([b"[]", b'"deposit"', b"1", b"null", b"true", b"", b" ", b"{",
                       encode([body_dict(rnd, "deposit", now)]), b"\x00", b"{}"])
    return Case("body not an object", signed("deposit", body), "dead:malformed")


# Names that a person would be shown: hidden or direction-changing characters are refused.
BAD_NAMES: Final = ["\u202eemoh", "ho\u200bme", "a\x00b", "\ud800", "x\udfffy", "a\u2028b",
                    "\ufeffhome", " home", "home\n", "", "x" * 65, "\U000e0041home",
                    "\u0378", "\ue000", "\u2066home\u2069", "a\u00adb", "\x7f", "tab\there"]
GOOD_NAMES: Final = ["Café", "日本 v 한국", "Ελλάδα", "x" * 64, "🙂", "Ａ", "e\u0301", "ﷺ",
                     "a b", "Ωmega-1/2 (live)"]


def unicode_name(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "bet", now)
    field = rnd.choice(["market", "selection"])
    good = rnd.random() < 0.3
    raw[field] = rnd.choice(GOOD_NAMES if good else BAD_NAMES)
    return Case("unicode name", signed("bet", encode(raw, ascii_only=rnd.random() < 0.5)),
                "ok" if good else "invalid")


def mixed_kinds(rnd: random.Random, now: int) -> Case:
    choice = rnd.randrange(5)
    if choice == 0:  # bet fields under kind deposit
        raw = {**body_dict(rnd, "bet", now), "kind": "deposit"}
        return Case("mixed-up kind", signed("deposit", raw), "invalid")
    if choice == 1:  # a deposit body labelled bet
        raw = {**body_dict(rnd, "deposit", now), "kind": "bet"}
        return Case("mixed-up kind", signed("bet", raw), "invalid")
    if choice == 2:  # settle fields on a withdrawal
        raw = {**body_dict(rnd, "settle", now), "kind": "withdrawal"}
        return Case("mixed-up kind", signed("withdrawal", raw), "invalid")
    kind, kid = rnd.choice([("settle", "frontend"), ("deposit", "frontend"),
                            ("bet", "cashier"), ("withdrawal", "settlement")])
    raw = body_dict(rnd, kind, now)
    if choice == 4:
        raw["amount"] = -5  # invalid too, but authorisation is decided first
    return Case("kind the key may not sign", signed(kind, raw, kid), "forbidden_kind")


def non_string_values(rnd: random.Random, now: int) -> Case:
    kind = rnd.choice(["bet", "settle"])
    raw = body_dict(rnd, kind, now)
    fields = ["nonce", "issued_at"] + (["market", "selection", "odds"] if kind == "bet"
                                       else ["bet_id", "outcome"])
    field = rnd.choice(fields)
    wrong = [2.5, None, True, [], {}, ["won"], {"a": "b"}, -1]
    raw[field] = rnd.choice(wrong + (["1764000000000", 2**53] if field == "issued_at"
                                     else [1, 10**20]))
    return Case("non-string field value", signed(kind, raw), "invalid")


def duplicate_json_keys(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "deposit", now)
    name = rnd.choice(["amount", "\ud800", "\u202e", "a\x00"])
    raw[name] = 1
    again = encode({name: rnd.choice([1, 10**9, "\udfff"])}, ascii_only=rnd.random() < 0.5)
    body = encode(raw, ascii_only=rnd.random() < 0.5)[:-1] + b"," + again[1:]
    return Case("repeated JSON key", signed("deposit", body), "invalid")


# --- signatures and keys ------------------------------------------------------------------


def sig_over_other_bytes(rnd: random.Random, now: int) -> Case:
    raw = body_dict(rnd, "deposit", now)
    body = encode(raw)
    other = rnd.choice([body + b" ", b" " + body, body.replace(b":", b": ", 1),
                        json.dumps(raw, sort_keys=False).encode(),
                        encode({**raw, "amount": raw["amount"] + 1})])
    return Case("signature over other bytes", entry(other, "cashier", sign(
        RING.get("cashier"), body)), "dead:bad_signature")


def mangled_sig(rnd: random.Random, now: int) -> Case:
    body = encode(body_dict(rnd, "deposit", now))
    sig = sign(RING.get("cashier"), body)
    mangled = rnd.choice([sig[:rnd.randrange(64)], sig + "0", sig.upper(), "z" * 64,
                          sig[:-1] + rnd.choice("0123456789abcdef".replace(sig[-1], "")),
                          " " * 64, sig[1:] + sig[0]])
    if mangled == sig:  # an all-digit signature has no upper case: try again next time
        mangled = sig[:-1]
    return Case("mangled signature", entry(body, "cashier", mangled), "dead:bad_signature")


def non_ascii_sig(rnd: random.Random, now: int) -> Case:
    f = signed("deposit", body_dict(rnd, "deposit", now))
    f[b"sig"] = f[b"sig"][:-1] + rnd.choice([b"\xff", b"\xc3\xa9", b"\x80"])
    return Case("non-ASCII signature", f, "dead:malformed")


def other_kids_sig(rnd: random.Random, now: int) -> Case:
    body = encode(body_dict(rnd, "deposit", now))
    signer = rnd.choice(["frontend", "settlement", "retiring"])
    return Case("another key's signature", entry(body, "cashier", key=RING.get(signer)),
                "dead:bad_signature")


def unknown_kid(rnd: random.Random, now: int) -> Case:
    body = encode(body_dict(rnd, "deposit", now))
    kid = rnd.choice(["nobody", "", "CASHIER", "cashier ", "x" * 10_000, "cash\u200bier",
                      "cashier\x00"])
    return Case("unknown key id", entry(body, kid, key=RING.get("cashier")), "dead:unknown_kid")


def bad_kid_bytes(rnd: random.Random, now: int) -> Case:
    f = signed("deposit", body_dict(rnd, "deposit", now))
    f[b"kid"] = rnd.choice([b"\xff", b"cash\xc0ier", b"\xed\xa0\x80"])
    return Case("kid not UTF-8", f, "dead:malformed")


def retired_kid(rnd: random.Random, now: int) -> Case:
    kind = rnd.choice(["bet", "deposit"])
    raw = body_dict(rnd, kind, now)
    raw["issued_at"] = RETIRED_AT - 1  # backdating does not help: ingress time counts
    return Case("retired key", signed(kind, raw, "retired"), "dead:retired_key")


def retiring_kid(rnd: random.Random, now: int) -> Case:
    return Case("key retiring later", signed("deposit", body_dict(rnd, "deposit", now),
                                             "retiring"), "ok")


def valid(rnd: random.Random, now: int) -> Case:
    kind = rnd.choice(["deposit", "bet"])
    return Case("valid control", signed(kind, body_dict(rnd, kind, now)), "ok")


BUILDERS: Final[list[Callable[[random.Random, int], Case]]] = [
    missing_fields, extra_fields, bad_version, huge_body, invalid_utf8, encoded_surrogate,
    json_bomb, shallow_nesting, nan_inf, bad_amount, good_amount, bad_identity,
    missing_identity, not_an_object, unicode_name, mixed_kinds, non_string_values,
    duplicate_json_keys, sig_over_other_bytes, mangled_sig, non_ascii_sig, other_kids_sig,
    unknown_kid, bad_kid_bytes, retired_kid, retiring_kid, valid,
]


def cases(rnd: random.Random, count: int, now: int) -> list[Case]:
    """``count`` cases, every builder in turn first, then at random."""
    out = [b(rnd, now) for b in BUILDERS[:count]]
    out += [rnd.choice(BUILDERS)(rnd, now) for _ in range(count - len(out))]
    return out
