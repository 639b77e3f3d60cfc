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
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.contract import KINDS
from producer.errors import AuthError, ForbiddenKind, KeyringError

SIG_HEX_LEN: Final = 64
KID_LEN_MAX: Final = 64
SECRET_LEN_MIN: Final = 16


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    secret: str = Field(min_length=SECRET_LEN_MIN)
    kinds: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class Key:
    """One signing key: its id, secret bytes and the intent kinds it may sign."""

    kid: str
    secret: bytes
    kinds: frozenset[str]

    def __repr__(self) -> str:  # never print secrets, not even by accident
        return f"Key(kid={self.kid!r}, kinds={sorted(self.kinds)!r})"


class Keyring:
    """Key ids mapped to keys, loaded from the JSON keyring file (see DESIGN.md)."""

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

    def kids_for(self, kind: str) -> list[str]:
        """Key ids allowed to sign ``kind``, sorted (used by demos and the load generator)."""
        return sorted(kid for kid, key in self._keys.items() if kind in key.kinds)

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
            keys[kid] = Key(kid, parsed.secret.encode(), frozenset(parsed.kinds))
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyringError(f"keyring file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise KeyringError(f"keyring file {path} is unreadable: {exc}") from None
        return cls.from_mapping(raw)


def sign(key: Key, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the body bytes exactly as they will be stored."""
    return hmac.new(key.secret, body, hashlib.sha256).hexdigest()


def check_kind(key: Key, kind: str) -> None:
    """Front-end keys may only sign bets; refuse anything else before it is sent."""
    if kind not in key.kinds:
        raise ForbiddenKind(f"key {key.kid!r} may not sign {kind!r} intents")


def verify(keyring: Keyring, kid: str, body: bytes, sig: str) -> Key:
    """Return the key that signed ``body`` or raise :class:`AuthError` with the reason."""
    key = keyring.get(kid)
    if len(sig) != SIG_HEX_LEN:
        raise AuthError("signature must be 64 lowercase hex characters", "bad_signature")
    expected = sign(key, body)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        raise AuthError("signature does not match the body", "bad_signature")
    return key
