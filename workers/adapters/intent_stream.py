"""Redis side of the writer: consumer group reads, nonce claims, and the post-commit MULTI.

One round trip per step per batch: a pipelined nonce claim, and after COMMIT one MULTI
that acknowledges the entries, parks dead letters and answers re-sent intents together.
(New outcomes are published by the confirmer, from the ledger.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import redis

from producer import constants as c
from producer.errors import LeaseLost
from workers.adapters.confirmation_publisher import Publisher
from workers.core.intake import DeadLetter, ingress_ms
from workers.settings import Settings

Entry = tuple[str, dict[bytes, bytes] | None]  # fields None: the entry was deleted
Claim = tuple[str, str, str]  # a nonce claim: (kid, nonce, intent id)
# What a batch's nonce claims returned, by stream entry id: None if the intent holds its
# nonce, else the id of the intent that does (a replay, unless it is the same intent).
Claims = dict[str, "str | None"]
CLAIM_ROUNDS_MAX: Final = 10_000  # XAUTOCLAIM pages per recovery; a bound, not a target
REPEATED_FIELD_PREFIX: Final = b"repeated:"  # marks a field name an entry gives twice
UNREAD_COUNT_MAX: Final = 1_000  # entries counted (at least) when XINFO's lag is unknown


@dataclass(frozen=True, slots=True)
class Finish:
    """Everything the post-commit MULTI does for one batch."""

    ack_ids: Sequence[str]
    dead: Sequence[DeadLetter]
    duplicates: Sequence[tuple] = ()  # re-sent intents' original outcomes, MESSAGE_FIELDS order


# KEYS: nonce keys; ARGV[1]: TTL s, ARGV[i+1]: the intent id claiming KEYS[i].
# Returns per key the previous holder, or 0 when this intent took the nonce.
_CLAIM_NONCES: Final = """
local out = {}
for i = 1, #KEYS do
  local held = redis.call('SET', KEYS[i], ARGV[i + 1], 'NX', 'GET', 'EX', ARGV[1])
  if held then out[i] = held else out[i] = 0 end
end
return out
"""


class IntentStream:
    def __init__(self, client: redis.Redis, settings: Settings, consumer: str) -> None:
        self._redis = client
        self._settings = settings
        self.consumer = consumer
        self._claim = client.register_script(_CLAIM_NONCES)
        self._publisher = Publisher(client, settings)
        # Same connections, but XREADGROUP replies unparsed: redis-py would fold a field
        # given twice into one dict key (last wins) and the intake could not tell.
        self._raw = redis.Redis(connection_pool=client.connection_pool)
        self._raw.set_response_callback("XREADGROUP", lambda reply, **_: reply)

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(c.STREAM_INTENTS, c.GROUP_WRITERS, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim_all(self, min_idle_ms: int = 0) -> int:
        """Move pending entries (of any consumer) idle at least ``min_idle_ms`` to us.

        On taking the lead every entry is claimed (only one writer leads at a time); later,
        only entries another consumer left idle for a lease period.
        """
        claimed, cursor = 0, "0-0"
        for _ in range(CLAIM_ROUNDS_MAX):
            # Not JUSTID: redis-py drops the cursor from JUSTID replies, so we could not page.
            cursor, entries, *rest = self._redis.xautoclaim(
                c.STREAM_INTENTS, c.GROUP_WRITERS, self.consumer, min_idle_time=min_idle_ms,
                start_id=cursor, count=self._settings.pending_claim_count)
            claimed += len(entries)
            deleted = [_text(i) for i in (rest[0] if rest else [])]
            if deleted:  # trimmed before they were processed: must never pass unnoticed
                self.finish(Finish([], [DeadLetter(i, "deleted", "pending entry was trimmed")
                                        for i in deleted], []))
            if _text(cursor) == "0-0":
                break
        self._forget_idle_consumers()
        return claimed

    def _forget_idle_consumers(self) -> None:
        """Consumers of dead writers pile up (one per pid); drop those with nothing pending
        and idle for a whole lease (a live one mid-read could otherwise lose its entries)."""
        for info in self._redis.xinfo_consumers(c.STREAM_INTENTS, c.GROUP_WRITERS):
            name = _text(info["name"])
            idle_ms = int(info.get("inactive", info["idle"]) or 0)
            if (name != self.consumer and int(info["pending"]) == 0
                    and idle_ms >= self._settings.lease_ms):
                self._redis.xgroup_delconsumer(c.STREAM_INTENTS, c.GROUP_WRITERS, name)

    def read_pending(self, after_id: str) -> list[Entry]:
        """Our own pending entries after ``after_id`` (redeliveries after a crash)."""
        return _entries(self._raw.xreadgroup(
            c.GROUP_WRITERS, self.consumer, {c.STREAM_INTENTS: after_id},
            count=self._settings.batch_size_max))

    def read_new(self, lease_owner: str) -> list[Entry]:
        """New entries, waiting up to ``batch_wait_ms`` for some, only while ``lease_owner``
        holds the writer lease (see read_new_now).

        The wait consumes nothing: it is an XREAD (no group) blocking at the stream's end,
        and the entries are then taken by the guarded read. A blocking XREADGROUP here let
        a writer frozen between its lease check and the read pull entries into its own
        pending list after a takeover, where they waited for a reclaim and were decided
        after later ones. An entry added between the first read and the wait is taken by
        the second read once the wait ends: at most ``batch_wait_ms`` later. Raises
        LeaseLost if another writer holds the lease (rather than wait on a stream it may no
        longer read)."""
        entries = self._read_leading(lease_owner)
        if entries is None:
            raise LeaseLost(f"lease {lease_owner} expired or was taken")
        if entries:
            return entries
        self._raw.xread({c.STREAM_INTENTS: "$"}, count=1, block=self._settings.batch_wait_ms)
        return self.read_new_now(lease_owner)

    def server_ms(self) -> int:
        """Redis's clock (ms): the clock stream entry ids, and so ingress times, come from."""
        seconds, micros = self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def read_new_now(self, lease_owner: str) -> list[Entry]:
        """New entries already there, without blocking (read-ahead during a commit), only
        if ``lease_owner`` still holds the writer lease (nothing otherwise).

        A writer that lost the lead (frozen, then woken) must not pull entries into its
        pending list after the new leader claimed everything: they would wait a lease
        period there and then be decided after later entries (a settlement before its
        bet). So the lease is WATCHed and the read runs in MULTI only if we hold it; any
        change to the lease meanwhile (taken, expired, or our own renewal) aborts the read,
        which the next loop repeats. A Lua script did the same at twice the cost: Redis
        copies a 4,000-entry reply into Lua tables and back (~15 vs ~7 ms here)."""
        return self._read_leading(lease_owner) or []

    def _read_leading(self, lease_owner: str) -> list[Entry] | None:
        """read_new_now's read; None when ``lease_owner`` does not hold the lease."""
        with self._raw.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(c.KEY_WRITER_LEASE)
                if _text(pipe.get(c.KEY_WRITER_LEASE) or b"") != lease_owner:
                    return None
                pipe.multi()
                pipe.xreadgroup(c.GROUP_WRITERS, self.consumer, {c.STREAM_INTENTS: ">"},
                                count=self._settings.batch_size_max)
                (reply,) = pipe.execute()
            except redis.WatchError as exc:
                if isinstance(exc.__context__, (redis.ConnectionError, redis.TimeoutError)):
                    # redis-py reports a dropped connection while watching as a WatchError;
                    # the read may have run and its reply been lost: the caller must know.
                    raise exc.__context__ from None
                return []  # the lease changed meanwhile (maybe our own renewal): read again
        return _entries(reply)

    def trim(self, retention_ms: int, now_ms: int) -> int:
        """Drop entries older than ``retention_ms`` that are acknowledged: never one that is
        pending or not yet delivered (XTRIM MINID below the oldest of those)."""
        if _writers_group(self._redis) is None:
            return 0
        floor, unacked = now_ms - retention_ms, unacked_floor_ms(self._redis)
        if unacked is not None:  # 0 is a floor too: nothing delivered yet
            floor = min(floor, unacked)
        # MINID keeps ids >= floor-0; an id with the same ms as the floor is always kept.
        return int(self._redis.xtrim(c.STREAM_INTENTS, minid=f"{floor}-0", approximate=False))

    def claim_nonces(self, claims: Sequence[Claim]) -> list[str | None]:
        """``SET nonce id NX GET EX ttl`` per (kid, nonce, id): None if we took it, else holder.

        One script call per batch: a single command to pack and one round trip, instead of
        a pipeline of thousands of SETs.
        """
        keys = [c.nonce_key(kid, nonce) for kid, nonce, _ in claims]
        holders = self._claim(keys=keys, args=[self._settings.nonce_ttl_s,
                                               *(intent_id for _, _, intent_id in claims)])
        return [None if h in (0, b"", None) else _text(h) for h in holders]

    def finish(self, work: Finish) -> None:
        """After COMMIT: dead-letter, answer re-sent intents and ack, in one MULTI."""
        s = self._settings
        pipe = self._redis.pipeline(transaction=True)
        self._publisher.add(pipe, work.duplicates)
        for dead in work.dead:
            pipe.xadd(c.STREAM_DEADLETTER, _dead_fields(dead), maxlen=s.deadletter_len_max,
                      approximate=True)
        if work.ack_ids:
            pipe.xack(c.STREAM_INTENTS, c.GROUP_WRITERS, *work.ack_ids)
        pipe.execute()


def _entries(reply: object) -> list[Entry]:
    """An unparsed XREADGROUP reply (one stream) as entries in stream order."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply  # RESP3 map / RESP2
    _, entries = next(iter(streams))
    return [(_text(eid), _fields(flat)) for eid, flat in entries]


def _fields(flat: list[bytes] | None) -> dict[bytes, bytes] | None:
    """An entry's field list as Redis stores it. A name given twice is kept under a marked
    name, so the intake refuses the entry (``malformed``) instead of using the last value."""
    if not flat:
        return None  # deleted before it was read
    pairs = iter(flat)
    out: dict[bytes, bytes] = dict(zip(pairs, pairs))
    if 2 * len(out) == len(flat):
        return out  # every name once (the usual case, built in C)
    out = {}
    for name, value in zip(flat[::2], flat[1::2]):
        out[REPEATED_FIELD_PREFIX + name if name in out else name] = value
    return out


def _dead_fields(dead: DeadLetter) -> dict[str, str]:
    return {"entry_id": dead.entry_id, "reason": dead.reason, "detail": dead.detail,
            "kid": dead.kid or ""}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _writers_group(client: redis.Redis) -> dict | None:
    """The writers' consumer group as XINFO GROUPS reports it; None before it exists."""
    try:
        groups = client.xinfo_groups(c.STREAM_INTENTS)
    except redis.ResponseError:
        return None  # no stream yet
    return next((g for g in groups if _text(g["name"]) == c.GROUP_WRITERS), None)


def unacked_floor_ms(client: redis.Redis) -> int | None:
    """Ingress time at or below every entry not yet acknowledged by a writer (pending, or
    not even delivered); None when everything is acknowledged. Trimming keeps what is at or
    above it, and archival keeps every outcome such an entry could still need."""
    group = _writers_group(client)
    if group is None:
        return None  # no writer has read anything yet: nothing was committed either
    floor = None
    pending = client.xpending(c.STREAM_INTENTS, c.GROUP_WRITERS)
    if pending["pending"]:
        floor = ingress_ms(_text(pending["min"]))
    if group["lag"] is None or group["lag"]:  # unread, or unknown: the first not delivered
        # (not the last delivered: that one may be hours older when the writer was idle, or
        # a moment older while it waits to read, and held archival back for nothing)
        first = _undelivered(client, group, count=1)
        if first:
            undelivered = ingress_ms(_text(first[0][0]))
            floor = undelivered if floor is None else min(floor, undelivered)
    return floor


def backlog(client: redis.Redis) -> tuple[int, int] | None:
    """(pending, not yet delivered) of the writers' group; None before a writer made it.

    XINFO's lag is a counter Redis can lose across an AOF reload: it reads as unknown for
    a while (read as 0, it would hide a backlog), and after several reloads under load it was seen
    stuck at 20,133 with nothing left to read. So it is checked against the stream: unknown
    -> the entries after the last delivered id are counted (up to a bound); positive but
    nothing after the last delivered id -> 0.
    """
    group = _writers_group(client)
    if group is None:
        return None
    lag = group["lag"]
    if lag is None:
        lag = len(_undelivered(client, group, count=UNREAD_COUNT_MAX))
    elif lag and not _undelivered(client, group, count=1):
        lag = 0
    return int(group["pending"]), int(lag)


def _undelivered(client: redis.Redis, group: dict, count: int) -> list:
    """Up to ``count`` stream entries after the group's last delivered one (not yet read
    by any writer), oldest first."""
    after = f"({_text(group['last-delivered-id'])}"
    return client.xrange(c.STREAM_INTENTS, min=after, count=count)
