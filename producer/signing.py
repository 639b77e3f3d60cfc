"""Keyring and HMAC-SHA256 signatures over the exact stored body bytes.

Verification needs no canonicalisation: the signature covers the bytes as stored in the
stream. The comparison is constant-time (``hmac.compare_digest``) so a forger learns
nothing from timing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.contract import KINDS
from producer.errors import AuthError, ForbiddenKind, KeyRetired, KeyringError
from producer.secret_files import read_secret_file

SIG_HEX_LEN: Final = 64
KID_LEN_MAX: Final = 64
SECRET_LEN_MIN: Final = 16
RETIRE_AT_MAX: Final = 2**53 - 1  # ms since epoch, JSON-safe like issued_at
# Producers stop signing with a key this long before it retires, so an intent signed just
# before retire_at is not ingested after it (and dead-lettered) while in flight.
RETIRE_MARGIN_MS: Final = 5_000
SHA256_BLOCK_BYTES: Final = 64  # HMAC pads the key to the hash's block size (RFC 2104)
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))  # translate tables, as in stdlib hmac
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    secret: str = Field(min_length=SECRET_LEN_MIN)
    kinds: list[str] = Field(min_length=1)
    retire_at: int | None = Field(None, ge=0, le=RETIRE_AT_MAX)  # ms since epoch


@dataclass(frozen=True)
class Key:
    """One signing key: its id, secret bytes and the intent kinds it may sign."""

    kid: str
    secret: bytes
    kinds: frozenset[str]
    retire_at: int | None = None  # ms since epoch; entries ingested from then on are refused
    # HMAC's keyed inner and outer SHA-256 states, made once per key (see ``sign``).
    _pads: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pads", _hmac_pads(self.secret))

    def __repr__(self) -> str:  # never print secrets, not even by accident
        retire = "" if self.retire_at is None else f", retire_at={self.retire_at}"
        return f"Key(kid={self.kid!r}, kinds={sorted(self.kinds)!r}{retire})"

    def retired(self, at_ms: int) -> bool:
        """Retired at ``at_ms``: the retirement time has been reached (inclusive)."""
        return self.retire_at is not None and at_ms >= self.retire_at


class Keyring:
    """Key ids mapped to keys, loaded from the JSON keyring file (docs/wire-contract.md)."""

    def __init__(self, keys: Mapping[str, Key]) -> None:
        self._keys = dict(keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, kid: str) -> Key:
        try:
            return self._keys[kid]
        except KeyError:
            raise AuthError(f"unknown key id {kid[:KID_LEN_MAX]!r}", "unknown_kid") from None

    def kids(self) -> list[str]:
        """Every key id, sorted (safe to log: never the secrets)."""
        return sorted(self._keys)

    def kids_for(self, kind: str, at_ms: int | None = None) -> list[str]:
        """Key ids allowed to sign ``kind``, sorted (used by demos and the load generator).

        With ``at_ms``, keys retired by then (plus the producer margin) are left out and
        keys never scheduled to retire come first, then the latest to retire: a rotation
        moves producers to the new key as soon as the old one gets a ``retire_at``.
        """
        keys = [k for k in self._keys.values() if kind in k.kinds]
        if at_ms is not None:
            keys = [k for k in keys if not k.retired(at_ms + RETIRE_MARGIN_MS)]
            keys.sort(key=lambda k: (k.retire_at is not None, -(k.retire_at or 0), k.kid))
            return [k.kid for k in keys]
        return sorted(k.kid for k in keys)

    @classmethod
    def from_mapping(cls, raw: object) -> Keyring:
        if not isinstance(raw, dict) or not raw:
            raise KeyringError("keyring must be a non-empty JSON object of key ids")
        keys = {}
        for kid, entry in raw.items():
            if not isinstance(kid, str) or not 0 < len(kid) <= KID_LEN_MAX:
                raise KeyringError(f"key id must be 1-{KID_LEN_MAX} characters")
            try:
                parsed = _KeyEntry.model_validate(entry)
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in err["loc"])
                msg = f"{where}: {err['msg']}" if where else err["msg"]
                raise KeyringError(f"keyring entry {kid!r}: {msg}") from None
            unknown = set(parsed.kinds) - set(KINDS)
            if unknown:
                raise KeyringError(f"keyring entry {kid!r}: unknown kinds {sorted(unknown)}")
            keys[kid] = Key(kid, parsed.secret.encode(), frozenset(parsed.kinds),
                            parsed.retire_at)
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            raw = json.loads(read_secret_file(Path(path), "keyring", KeyringError)
                             .decode("utf-8"))
        except FileNotFoundError:
            raise KeyringError(f"keyring file not found: {path}") from None
        except UnicodeDecodeError as exc:  # its message quotes the byte: part of a secret
            raise KeyringError(f"keyring file {path} is unreadable: not UTF-8 (invalid byte "
                               f"at offset {exc.start})") from None
        except (OSError, ValueError) as exc:
            raise KeyringError(f"keyring file {path} is unreadable: {exc}") from None
        return cls.from_mapping(raw)


def _hmac_pads(secret: bytes) -> tuple:
    """SHA-256 states after absorbing the key XOR ipad and XOR opad (RFC 2104)."""
    if len(secret) > SHA256_BLOCK_BYTES:
        secret = hashlib.sha256(secret).digest()
    secret = secret.ljust(SHA256_BLOCK_BYTES, b"\0")
    return hashlib.sha256(secret.translate(_IPAD)), hashlib.sha256(secret.translate(_OPAD))


def sign(key: Key, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the body bytes exactly as they will be stored.

    HMAC from the key's precomputed pad states: copying two hash states costs ~2 us here,
    where ``hmac.digest`` sets OpenSSL 3 up anew per call (~5 us). The writer verifies
    every intent, so this is per-intent time on its busiest thread. Equal to
    ``hmac.digest`` for any key and body (tests/unit/test_signing.py, hypothesis).
    """
    inner_pad, outer_pad = key._pads
    inner = inner_pad.copy()
    inner.update(body)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def check_kind(key: Key, kind: str) -> None:
    """Front-end keys may only sign bets; refuse anything else before it is sent."""
    if kind not in key.kinds:
        raise ForbiddenKind(f"key {key.kid!r} may not sign {kind!r} intents")


def check_active(key: Key, at_ms: int) -> None:
    """Refuse a retired key (the producer checks before signing, the writer at ingress)."""
    if key.retired(at_ms):
        raise KeyRetired(f"key {key.kid!r} retired at {key.retire_at} (ms since epoch); "
                         f"time checked: {at_ms}")


def verify(keyring: Keyring, kid: str, body: bytes, sig: str, at_ms: int | None = None) -> Key:
    """Return the key that signed ``body`` or raise :class:`AuthError` with the reason.

    ``at_ms`` is the entry's ingress time (its stream id), not ``issued_at``: the body is
    signed by the very key in question, so a leaked retired key could backdate it. The
    signature is checked first, so ``retired_key`` means a genuine producer still signs
    with the old key, while a forgery stays ``bad_signature``.
    """
    key = keyring.get(kid)
    if len(sig) != SIG_HEX_LEN:
        raise AuthError("signature must be 64 lowercase hex characters", "bad_signature")
    expected = sign(key, body)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        raise AuthError("signature does not match the body", "bad_signature")
    if at_ms is not None:
        check_active(key, at_ms)
    return key
