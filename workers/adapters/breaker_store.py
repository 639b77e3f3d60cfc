"""The breaker's state in Redis: one hash and a transition log.

The writer is the only process that moves the breaker automatically; operators can force
it with ``betstream breaker open|close``. Every change is a compare-and-set on a version
number, so an operator's force is never overwritten by a writer that had not seen it.

A forced OPEN is also recorded in a small file beside the ledger (``record_path``): Redis
may lose its data, and a breaker an operator (or an invariant violation) forced open must
not quietly close with it. The writer restores it from that record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

import redis

from producer import constants as c
from producer.breaker_state import OPEN, Breaker, BreakerLimits, Snapshot, hash_fields, parse
from producer.contract import now_ms
from workers.core.breaker_machine import force

LOG_LEN_MAX: Final = 10_000
REDIS_UNREACHABLE: Final = (redis.ConnectionError, redis.TimeoutError)  # incl. LOADING

# KEYS[1] hash, KEYS[2] log stream; ARGV[1] expected version, ARGV[2] log maxlen,
# then field/value pairs. Writes only if nobody changed the version meanwhile.
_CAS: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'version', current + 1, unpack(fields))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
return current + 1
"""


RECORD_FILE_MODE: Final = 0o600


class BreakerStore:
    def __init__(self, client: redis.Redis, limits: BreakerLimits,
                 record_path: Path | None = None) -> None:
        self._redis = client
        self.limits = limits
        self._record_path = record_path
        self._cas = client.register_script(_CAS)

    def load(self) -> Snapshot:
        snap = parse(self._redis.hgetall(c.KEY_BREAKER), self.limits)
        return Snapshot(snap.breaker, snap.version, self.limits)  # the writer's own limits

    def save(self, expected_version: int, b: Breaker) -> int | None:
        """New version, or None if someone else (an operator) changed it first."""
        flat = [x for kv in hash_fields(b, self.limits).items() for x in kv]
        version = self._cas(keys=[c.KEY_BREAKER, c.STREAM_BREAKER_LOG],
                            args=[expected_version, LOG_LEN_MAX, *flat])
        return None if int(version) < 0 else int(version)

    def force(self, state: str, reason: str) -> Breaker:
        self._record(state, reason)  # first: a force Redis takes is never unrecorded
        for _ in range(10):  # a bounded compare-and-set loop
            snap = self.load()
            forced = force(snap.breaker, state, now_ms(), reason)
            if self.save(snap.version, forced) is not None:
                return forced
        raise RuntimeError("breaker kept changing; try again")

    def forced_record(self) -> tuple[str, str] | None:
        """(state, reason) of the breaker forced OPEN as recorded beside the ledger; None
        if it is not forced open. Raises OSError or ValueError if the record is unreadable."""
        if self._record_path is None or not self._record_path.exists():
            return None
        record = json.loads(self._record_path.read_text())
        return (record["state"], record["reason"]) if record["state"] == OPEN else None

    def _record(self, state: str, reason: str) -> None:
        if self._record_path is None:
            return
        if state != OPEN:
            self._record_path.unlink(missing_ok=True)
            return
        temporary = self._record_path.with_name(self._record_path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, RECORD_FILE_MODE)
        with os.fdopen(fd, "w") as out:
            json.dump({"state": state, "reason": reason, "at_ms": now_ms()}, out)
        os.replace(temporary, self._record_path)

    def transitions(self, count: int = 20) -> list[dict[str, str]]:
        rows = self._redis.xrevrange(c.STREAM_BREAKER_LOG, count=count)
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]

