"""Producer client: sign intents and XADD them to the intents stream.

``submit_many`` pipelines the XADDs in bounded chunks so a producer pays one round trip per
chunk, not per intent. An XADD reply means Redis accepted the entry; the writer then gives
it exactly one outcome (or dead-letters it if it fails authentication).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import redis

from producer import constants as c
from producer.contract import Intent, intent_body, now_ms
from producer.errors import ForbiddenKind, KeyRetired
from producer.signing import RETIRE_MARGIN_MS, Key, Keyring, check_active, check_kind, sign

PIPELINE_SIZE_MAX: Final = 1000


def entry_fields(key: Key, body: bytes) -> dict[str, str | bytes]:
    """The four fields of a stream entry, exactly as wire contract v1 defines them."""
    return {
        c.FIELD_VERSION: c.WIRE_VERSION,
        c.FIELD_KID: key.kid,
        c.FIELD_BODY: body,
        c.FIELD_SIG: sign(key, body),
    }


class Producer:
    """Signs with one key per kind (from the keyring) and enqueues onto the intents stream."""

    def __init__(
        self,
        client: redis.Redis,
        keyring: Keyring,
        kids: dict[str, str] | None = None,
        pipeline_size_max: int = PIPELINE_SIZE_MAX,
        shed: bool = True,
    ) -> None:
        """``shed``: refuse fast with BreakerOpen while the shared circuit breaker is open."""
        from producer.shedding import BreakerView  # reads the breaker hash, cached

        self._redis = client
        self._keyring = keyring
        self._kids = dict(kids or {})
        self._pipeline_size_max = pipeline_size_max
        self._breaker = BreakerView(client) if shed else None

    @property
    def pipeline_size_max(self) -> int:
        """XADDs per pipelined round trip (a journal records each answered chunk)."""
        return self._pipeline_size_max

    def key_for(self, kind: str) -> Key:
        """The configured key for ``kind``, else the best active keyring key allowed to sign
        it (one never scheduled to retire first). A retired key is refused: KeyRetired."""
        now = now_ms()
        kid = self._kids.get(kind)
        if kid is None:
            allowed = self._keyring.kids_for(kind, at_ms=now)
            if not allowed:
                if self._keyring.kids_for(kind):
                    raise KeyRetired(f"every key that may sign {kind!r} intents is retired "
                                     f"(or retires within {RETIRE_MARGIN_MS} ms): "
                                     f"{self._keyring.kids_for(kind)}")
                raise ForbiddenKind(f"no key in the keyring may sign {kind!r} intents")
            kid = allowed[0]
        key = self._keyring.get(kid)
        check_kind(key, kind)
        check_active(key, now + RETIRE_MARGIN_MS)
        return key

    def fields_for(self, intent: Intent) -> dict[str, str | bytes]:
        return entry_fields(self.key_for(intent.kind), intent_body(intent))

    def submit(self, intent: Intent) -> str:
        """Sign and enqueue one intent; returns the stream entry id (its ingress time).

        Raises BreakerOpen (nothing sent) while the circuit breaker sheds load.
        """
        fields = self.fields_for(intent)
        if self._breaker:
            self._breaker.check()
        entry_id = self._redis.xadd(c.STREAM_INTENTS, fields)
        return _text(entry_id)

    def submit_many(self, intents: Iterable[Intent]) -> list[str]:
        """Sign and enqueue many intents with pipelined XADDs; ids in submission order."""
        return self.submit_fields(self.fields_for(i) for i in intents)

    def submit_fields(self, entries: Iterable[dict[str, str | bytes]]) -> list[str]:
        """Enqueue already-signed entries in pipelined chunks of ``pipeline_size_max``."""
        ids: list[str] = []
        chunk: list[dict[str, str | bytes]] = []
        for fields in entries:
            chunk.append(fields)
            if len(chunk) >= self._pipeline_size_max:
                ids.extend(self._flush(chunk))
                chunk = []
        if chunk:
            ids.extend(self._flush(chunk))
        return ids

    def _flush(self, chunk: Sequence[dict[str, str | bytes]]) -> list[str]:
        if self._breaker:
            self._breaker.check()  # whole chunks are shed, never half of one
        pipe = self._redis.pipeline(transaction=False)
        for fields in chunk:
            pipe.xadd(c.STREAM_INTENTS, fields)
        return [_text(r) for r in pipe.execute()]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
