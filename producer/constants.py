"""Every Redis key, stream, group and channel name betstream uses, in one place.

Producers, the writer, the confirmer and the gateway must agree on these names; keeping
them here (as arq does in ``arq/constants.py``) makes a rename a one-line change and lets
operators find every key the system touches.
"""

from typing import Final

PREFIX: Final = "betstream"

# Wire contract v1 (docs/wire-contract.md).
WIRE_VERSION: Final = "1"
STREAM_INTENTS: Final = f"{PREFIX}:intents"
FIELD_VERSION: Final = "v"
FIELD_KID: Final = "kid"
FIELD_BODY: Final = "body"
FIELD_SIG: Final = "sig"
ENTRY_FIELDS: Final = frozenset({FIELD_VERSION, FIELD_KID, FIELD_BODY, FIELD_SIG})

# Outcomes and rejects.
STREAM_CONFIRMATIONS: Final = f"{PREFIX}:confirmations"
STREAM_DEADLETTER: Final = f"{PREFIX}:deadletter"
CHANNEL_USER_PREFIX: Final = f"{PREFIX}:user:"
STREAM_USER_CONFIRMATIONS_PREFIX: Final = f"{PREFIX}:confirmations:user:"

# Confirmer coordination: one confirmer publishes at a time, from the ledger.
KEY_CONFIRMER_LEASE: Final = f"{PREFIX}:confirmer:lease"
KEY_CONFIRMER_PROGRESS: Final = f"{PREFIX}:confirmer:progress"  # hash: published seq, when
# Set once in each Redis dataset: finding it gone means Redis lost its data (a restart
# without persistence, FLUSHALL, a new server).
KEY_REDIS_INSTANCE: Final = f"{PREFIX}:instance"

# Writer coordination.
GROUP_WRITERS: Final = f"{PREFIX}:writers"
KEY_WRITER_LEASE: Final = f"{PREFIX}:writer:lease"
KEY_WRITER_HEALTH: Final = f"{PREFIX}:writer:health"
KEY_NONCE_PREFIX: Final = f"{PREFIX}:nonce:"
KEY_STATS: Final = f"{PREFIX}:stats"
KEY_BREAKER: Final = f"{PREFIX}:breaker"  # hash: the shared breaker state
STREAM_BREAKER_LOG: Final = f"{PREFIX}:breaker:log"  # every transition, bounded
KEY_METRICS_PREFIX: Final = f"{PREFIX}:metrics:"


def user_channel(user_id: int) -> str:
    """Pub/sub channel on which one user's outcomes are published."""
    return f"{CHANNEL_USER_PREFIX}{user_id}"


def user_confirmations(user_id: int) -> str:
    """A short per-user stream of recent confirmations, for reconnecting subscribers."""
    return f"{STREAM_USER_CONFIRMATIONS_PREFIX}{user_id}"


def nonce_key(kid: str, nonce: str) -> str:
    """Nonces are unique per key id, so the key id is part of the Redis key."""
    return f"{KEY_NONCE_PREFIX}{kid}:{nonce}"
