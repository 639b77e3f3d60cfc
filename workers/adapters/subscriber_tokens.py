"""Subscriber tokens: ``v1.<user_id>.<expires_ms>.<hmac>``, signed with the gateway secret.

Small and stateless: the gateway verifies a token with one HMAC and a clock read; no
session store. Issued by ``betstream token USER_ID``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Final

from producer.errors import BetstreamError, ConfigError
from producer.secret_files import read_secret_file

VERSION: Final = "v1"
SECRET_BYTES: Final = 32
TOKEN_LEN_MAX: Final = 256


class TokenError(BetstreamError):
    """A token is missing, malformed, forged or expired."""


def load_or_create_secret(path: Path) -> bytes:
    """The gateway's signing secret; created (owner-only) on first use."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # owner-only from the first byte; if two processes race, one secret wins
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(SECRET_BYTES))
        secret = read_secret_file(path, "gateway secret").decode().strip()
    except OSError as exc:
        raise ConfigError(f"gateway secret {path}: {exc}") from None
    if len(secret) < 32:
        raise ConfigError(f"gateway secret {path} is shorter than 32 characters")
    return secret.encode()


def _mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def issue(secret: bytes, user_id: int, ttl_s: int, now_ms: int | None = None) -> str:
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    payload = f"{VERSION}.{user_id}.{now + ttl_s * 1000}"
    return f"{payload}.{_mac(secret, payload)}"


def _parts(token: str) -> list[str]:
    """Version, user id, expiry and signature; TokenError unless the token has that form.
    ASCII first: str.isdigit accepts digits int() refuses, and compare_digest refuses
    non-ASCII text (either was a 500 with a traceback)."""
    parts = token.split(".") if len(token) <= TOKEN_LEN_MAX and token.isascii() else []
    if len(parts) != 4 or parts[0] != VERSION or not parts[1].isdigit() or not parts[2].isdigit():
        raise TokenError("token malformed")
    return parts


def verify(secret: bytes, token: str | None, now_ms: int | None = None) -> int:
    """The user id the token was issued for, or :class:`TokenError`."""
    if not token:
        raise TokenError("token missing")
    parts = _parts(token)
    payload = ".".join(parts[:3])
    if not hmac.compare_digest(_mac(secret, payload), parts[3]):
        raise TokenError("token signature invalid")
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    if int(parts[2]) <= now:
        raise TokenError("token expired")
    return int(parts[1])
