"""The Redis dataset's marker: set once in each dataset, so finding it gone means Redis
lost its data (restarted without persistence, FLUSHALL, replaced by a new server)."""

from __future__ import annotations

import uuid

import redis

from producer import constants as c


def instance_marker(client: redis.Redis) -> tuple[str, bool]:
    """(the marker, whether it was missing and set just now)."""
    fresh = uuid.uuid4().hex
    if client.set(c.KEY_REDIS_INSTANCE, fresh, nx=True):
        return fresh, True
    held = client.get(c.KEY_REDIS_INSTANCE)
    if held is None:  # deleted between the two calls: Redis lost its data again
        return instance_marker(client)
    return (held.decode() if isinstance(held, bytes) else held), False
