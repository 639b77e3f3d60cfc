"""Read and admit the batch read ahead in a child process, beside the writer's work.

Why: the writer process is bound by the GIL (held ~86 % of a drain's wall time), and
reading plus admitting the next batch (XREADGROUP, HMAC, parsing) was over half of its
main thread's work. A child process does both on the other core; the writer gets back
compact, already-checked candidates and only rebuilds them.

Equal by construction: the child runs the writer's own ``admit_entry``. Only candidates
with a fast-path intent and no reason travel as such; every other entry (a dead letter, a
rejection found at admission, a body only the pydantic path accepts) travels raw and is
admitted again in the writer. The child reads as the writer's own consumer, so what it
reads is pending under the writer exactly as an in-process read would be. It then claims
the nonces of the fresh fast candidates, the same way the writer would before deciding
(workers/writer/nonce_claims.py): in the child, because packing the claims held the
writer's GIL ~5 % of the time. The writer claims any it did not.

Frames on the child's stdin/stdout: a 4-byte big-endian length, then msgpack (msgspec),
never pickle. A child that fails, hangs or dies costs one read-ahead: entries it had read
are pending under the writer, which reads its own pending entries first on its next loop
(in stream order, before anything newer), reads in process meanwhile, and starts a new
child later (workers/writer/batch_writer.py).
"""

from __future__ import annotations

import os
from typing import Final

import msgspec

from producer.fastparse import FastIntent
from producer.signing import Keyring
from workers.adapters.intent_stream import Entry
from workers.core.decision import Candidate
from workers.core.intake import ADMITTED_ELSEWHERE, DeadLetter, admit_entry

FRAME_HEADER_BYTES: Final = 4
FRAME_BYTES_MAX: Final = 256 * 2**20  # far above a batch (~2 MB at 8,000 intents)
RawKeyring = dict[str, tuple[bytes, list[str], "int | None"]]


class Hello(msgspec.Struct, frozen=True):
    settings_json: str
    consumer: str


class Request(msgspec.Struct, frozen=True):
    lease_owner: str  # read only while this writer holds the lease (WATCH, MULTI)
    keyring: RawKeyring | None = None  # sent when it changed (SIGHUP reload)


class Reply(msgspec.Struct, frozen=True):
    ids: list[str]  # every entry read, in stream order
    # (index, ingress ms, body sha, kid, intent), in stream order
    fast: list[tuple[int, int, bytes, str, FastIntent]]
    raw: list[tuple[int, dict[bytes, bytes] | None]]  # (index, fields): admitted by the writer
    error: str | None = None  # Redis failed the read (it may have run: the writer rereads)
    # The nonce claims the child made, by entry id (``Claims``): None if it made none
    # (Redis failed them), and the writer claims them itself.
    claims: dict[str, str | None] | None = None


def write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload)
    while view:
        view = view[os.write(fd, view):]


def read_frame(fd: int) -> bytes | None:
    """One frame, or None at end of file (the other side is gone)."""
    header = _read_exactly(fd, FRAME_HEADER_BYTES)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > FRAME_BYTES_MAX:
        raise ValueError(f"frame of {size} bytes, over {FRAME_BYTES_MAX}")
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, size - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def raw_keyring(keyring: Keyring) -> RawKeyring:
    return {kid: (key.secret, sorted(key.kinds), key.retire_at)
            for kid in keyring.kids() for key in (keyring.get(kid),)}


def split(entries: list[Entry], keyring: Keyring) -> tuple[Reply, list[Candidate]]:
    """The child's work: admit each entry; send fast candidates as such, the rest raw.
    Returns the reply and its fast candidates (whose nonces the child claims)."""
    fast, raw, candidates = [], [], []
    for index, (entry_id, fields) in enumerate(entries):
        result = admit_entry(entry_id, fields, keyring)
        if (isinstance(result, Candidate) and result.pre_reason is None
                and isinstance(result.intent, msgspec.Struct)):
            fast.append((index, result.ingress_ms, result.body_sha, result.kid, result.intent))
            candidates.append(result)
        else:
            raw.append((index, fields))
    return Reply([entry_id for entry_id, _ in entries], fast, raw), candidates


def merge(reply: Reply, keyring: Keyring) -> tuple[list[Entry], list[Candidate],
                                                    list[DeadLetter]]:
    """The writer's side: the same (candidates, dead letters) ``admit`` gives, in order."""
    entries: list[Entry] = [(entry_id, ADMITTED_ELSEWHERE) for entry_id in reply.ids]
    if not reply.raw:  # the usual batch: every entry a fast candidate, built in one pass
        return entries, _fast_candidates(reply), []
    results = _mixed_results(reply, keyring)
    candidates = [r for r in results if isinstance(r, Candidate)]
    return entries, candidates, [r for r in results if isinstance(r, DeadLetter)]


def _fast_candidates(reply: Reply) -> list[Candidate]:
    """Every entry a fast candidate, given once each in stream order (else: refused).
    ``Candidate.of`` written out: this runs for every intent, on the writer's thread."""
    ids = reply.ids
    candidates = [Candidate(ids[i], at, intent.id, intent.kind, intent.user_id, sha, intent,
                            kid=kid)
                  for n, (i, at, sha, kid, intent) in enumerate(reply.fast) if i == n]
    if len(candidates) != len(ids) or len(reply.fast) != len(ids):
        raise ValueError("admission reply does not cover every entry it read, in order")
    return candidates


def _mixed_results(reply: Reply, keyring: Keyring) -> list[Candidate | DeadLetter]:
    """Fast candidates and raw entries placed by index: each entry exactly once."""
    ids = reply.ids
    results: list[Candidate | DeadLetter | None] = [None] * len(ids)
    for index, at, sha, kid, intent in reply.fast:
        _check_free(results, index)
        results[index] = Candidate.of(ids[index], at, intent, sha, kid)
    for index, fields in reply.raw:
        _check_free(results, index)
        results[index] = admit_entry(ids[index], fields, keyring)
    if any(r is None for r in results):
        raise ValueError("admission reply does not cover every entry it read")
    return results  # type: ignore[return-value]  (no None left)


def _check_free(results: list[Candidate | DeadLetter | None], index: int) -> None:
    """A mixed reply names each entry once, by its place in the batch (else: refused)."""
    if not 0 <= index < len(results) or results[index] is not None:
        raise ValueError(f"admission reply names entry {index} twice or out of the batch")
