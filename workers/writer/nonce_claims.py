"""Nonce claims: the one way the writer (and its admission child) claims a batch's nonces.

A candidate's nonce is claimed before it is decided: ``SET NX GET`` of (kid, nonce) to the
intent id, one script call per batch. A claim is keyed by intent id, so claiming again
(after a crash, a retried commit, or for a candidate that turns out to be a repeat)
changes nothing. Only candidates that are still fresh are claimed: a stale intent is
rejected without taking its nonce.

Claims may start early, where they cost the writer's thread nothing: in the admission
child, or on an I/O thread while the batch before commits. ``settle`` then completes them
at decision time, with the same clock reading the decision uses, so every candidate
decided fresh holds a claim (workers/writer/batch_pipeline.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeAlias

import redis

from workers.adapters.intent_stream import Claim, Claims
from workers.core.decision import Candidate
from workers.core.intake import undecided_fresh
from workers.settings import Settings

ClaimNonces: TypeAlias = Callable[[Sequence[Claim]], "list[str | None]"]
# Claims made before a batch is decided: by the admission child (done), or on the I/O
# thread (a future); None when none were made.
EarlyClaims: TypeAlias = "Future[Claims] | Claims | None"


def claim_fresh(claim_nonces: ClaimNonces, candidates: Sequence[Candidate], now: int,
                settings: Settings, known: Claims | None = None) -> Claims:
    """Claim the nonces of the candidates fresh at ``now`` and not in ``known``; returns
    ``known`` with their claims added, by stream entry id."""
    known = known or {}
    unclaimed = [c for c in candidates if c.entry_id not in known] if known else candidates
    picked = undecided_fresh(unclaimed, now, settings.intent_age_max_ms,
                             settings.clock_skew_max_ms)
    if not picked:
        return known
    holders = claim_nonces([(c.kid, c.intent.nonce, c.id) for c in picked])  # type: ignore[union-attr]
    return {**known, **{c.entry_id: holder for c, holder in zip(picked, holders)}}


class NonceClaimer:
    def __init__(self, settings: Settings, claim_nonces: ClaimNonces,
                 clock: Callable[[], int]) -> None:
        self._s = settings
        self._claim_nonces = claim_nonces
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None  # made on the first early claim

    def start(self, candidates: Sequence[Candidate]) -> EarlyClaims:
        """Claim on the I/O thread, so Redis runs the claims while this thread admits and
        acknowledges (inline, it waited ~25 ms per 4,000 intents)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="nonces")
        return self._pool.submit(claim_fresh, self._claim_nonces, candidates, self._clock(),
                                 self._s)

    def settle(self, candidates: Sequence[Candidate], early: EarlyClaims, now: int) -> Claims:
        """Every claim the candidates fresh at ``now`` need: those made early, and the rest
        made here (none made early, Redis failed them, or the clock moved). A failure here
        is a Redis step failing, retried by the caller."""
        return claim_fresh(self._claim_nonces, candidates, now, self._s, _done(early))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _done(early: EarlyClaims) -> Claims:
    """What the early claims found; nothing if there were none or Redis failed them."""
    if early is None:
        return {}
    if isinstance(early, dict):
        return early
    try:
        return early.result()
    except redis.RedisError:
        return {}
