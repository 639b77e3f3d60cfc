"""Clients for Redis, built from settings (no module-level connections)."""

from __future__ import annotations

from typing import Final

import redis

SOCKET_TIMEOUT_S: Final = 10.0  # longer than any blocking read the writer issues
CONNECT_TIMEOUT_S: Final = 2.0
HEALTH_CHECK_INTERVAL_S: Final = 15


def redis_client(url: str) -> redis.Redis:
    """Bytes in, bytes out: bodies are signed bytes and must not be re-decoded."""
    return redis.Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S, decode_responses=False)
