"""One batch, in the order that makes it correct (docs/architecture.md, writer rules 3 and 4).

authenticate -> repeats -> freshness -> nonces -> decide -> ONE transaction -> (caller)
ack + confirm. Every step before COMMIT may be re-run after a failure: lookups are
repeated, nonces recognise their own intent id, and the balance cache is only updated
after a successful commit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

import redis

from producer.contract import now_ms
from producer.invariants import require
from producer.signing import Keyring
from workers.adapters.intent_stream import Claim, Claims, Entry, Finish, IntentStream
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import BatchWrite, OutcomeRow, build_batch
from workers.core.decision import ACCEPTED, SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.core.intake import DeadLetter, admit_entry, freshness_reason, ingress_ms
from workers.core.repeats import Repeat, split_repeats
from workers.settings import Settings
from workers.writer.hooks import BatchReport

BALANCE_CACHE_SIZE_MAX: Final = 1_000_000  # accounts; past this the cache starts afresh
Admitted: TypeAlias = tuple[list[Candidate], list[DeadLetter]]
# Nonce claims made before a batch is decided: by the admission child (done), or on an I/O
# thread while the batch before commits (a future).
EarlyClaims: TypeAlias = "Future[Claims] | Claims"
# Runs while a batch commits; it is handed the batch's own side work to fit in.
Meanwhile: TypeAlias = Callable[[Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class Committed:
    finish: Finish
    report: BatchReport


class BatchPipeline:
    def __init__(self, settings: Settings, store: Store, stream: IntentStream,
                 keyring: Keyring) -> None:
        self._s = settings
        self._store = store
        self._stream = stream
        self.keyring = keyring
        self.balances: dict[int, int] = {}  # cache; valid only while we hold the epoch
        self._committer: ThreadPoolExecutor | None = None  # made on first overlapped commit
        self._claimer: ThreadPoolExecutor | None = None  # made on first early nonce claim

    def close(self) -> None:
        for pool in (self._committer, self._claimer):
            if pool is not None:
                pool.shutdown(wait=True)

    def forget(self, accounts: Sequence[int] | None = None) -> None:
        """Drop cached balances (all, or those a failed batch touched)."""
        if accounts is None:
            self.balances.clear()
        else:
            for account in accounts:
                self.balances.pop(account, None)

    def run(self, entries: Sequence[Entry], epoch: int, admitted: Admitted | None = None,
            meanwhile: Meanwhile | None = None, early: EarlyClaims | None = None) -> Committed:
        """Decide and durably commit one batch; returns what to ack and publish.

        ``admitted`` is ``admit(entries)`` done earlier (it is pure), ``early`` its nonce
        claims started then (``claim_early``). ``meanwhile`` runs on this thread while the
        commit runs on the committer thread; it must not raise, and it must call the
        function it is given (which prepares this batch's confirmations) once.
        """
        candidates, dead = admitted if admitted is not None else self.admit(entries)
        stored = self._store.lookup([c.id for c in candidates], [c.entry_id for c in candidates])
        fresh, repeats = split_repeats(candidates, stored)
        fresh = self._check_nonces(self._check_freshness(fresh), early)
        book = self._book(fresh)
        decisions, after = decide_batch(fresh, book)
        if not decisions:
            return _committed(entries, [], [], dead, repeats)
        batch = build_batch(decisions, self._store.heads, epoch, now_ms())
        prepared: list[Committed] = []

        def prepare() -> None:  # pure: what to publish once (and only if) this is durable
            ingress = [d.candidate.ingress_ms for d in decisions]  # one per outcome, in order
            prepared.append(_committed(entries, batch.outcomes, ingress, dead, repeats))

        try:
            commit_ms = self._commit(batch, meanwhile, prepare)
        except Exception:
            self.forget(list(after.balances))
            raise
        self._remember(after)
        require(len(prepared) == 1, "a batch's confirmations must be prepared exactly once")
        committed = prepared[0]
        return Committed(committed.finish, replace(committed.report, commit_ms=commit_ms))

    def _commit(self, batch: BatchWrite, meanwhile: Meanwhile | None,
                prepare: Callable[[], None]) -> float:
        """SQLite steps release the GIL: with ``meanwhile``, the commit runs on its own
        thread so the two overlap (and the batch's confirmations are prepared then too;
        without it, after the commit). Either way this returns only once it is durable,
        with the commit's own duration in ms (what the breaker watches, not
        ``meanwhile``'s)."""
        def timed() -> float:
            started = time.perf_counter()
            self._store.commit(batch)
            return (time.perf_counter() - started) * 1000

        if meanwhile is None:
            took_ms = timed()
            prepare()
            return took_ms
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="committer")
        future = self._committer.submit(timed)
        try:
            meanwhile(prepare)
        finally:
            took_ms = future.result()  # the commit's own error, if any, is what propagates
        return took_ms

    def admit(self, entries: Sequence[Entry]) -> Admitted:
        """Authenticate and parse (pure: may run ahead of the batch before it)."""
        candidates, dead = [], []
        keyring = self.keyring  # one keyring per batch, even if a reload swaps it meanwhile
        for entry_id, fields in entries:
            result = admit_entry(entry_id, fields, keyring)
            (dead if isinstance(result, DeadLetter) else candidates).append(result)
        return candidates, dead

    def _check_freshness(self, fresh: list[Candidate]) -> list[Candidate]:
        now, age_max_ms, skew_max_ms = (now_ms(), self._s.intent_age_max_ms,
                                        self._s.clock_skew_max_ms)
        out = []
        for cand in fresh:  # (_undecided and _freshness written out: runs for every intent)
            if cand.pre_reason is None and cand.intent is not None:
                reason = freshness_reason(cand.intent, cand.ingress_ms, now, age_max_ms,
                                          skew_max_ms)
                if reason is not None:
                    cand = cand.rejected_early(reason, "intent too old or issued too far "
                                               "from its ingress time")
            out.append(cand)
        return out

    def _freshness(self, cand: Candidate, now: int) -> str | None:
        return freshness_reason(cand.intent, cand.ingress_ms, now,  # type: ignore[arg-type]
                                self._s.intent_age_max_ms, self._s.clock_skew_max_ms)

    def claim_early(self, admitted: Admitted) -> EarlyClaims | None:
        """Start claiming the nonces of a batch read ahead, on an I/O thread, so Redis runs
        the claims while this thread admits and acknowledges (inline, it waits ~25 ms per
        4,000 intents). Claims are keyed by intent id: claiming again, or for a candidate
        that turns out to be a repeat (same id, so same holder), changes nothing."""
        now = now_ms()
        picked = [c for c in admitted[0] if _undecided(c) and self._freshness(c, now) is None]
        if not picked:
            return None
        if self._claimer is None:
            self._claimer = ThreadPoolExecutor(1, thread_name_prefix="nonces")
        return self._claimer.submit(self._claims, picked)

    def _claims(self, cands: Sequence[Candidate]) -> Claims:
        holders = self._stream.claim_nonces([_claim(c) for c in cands])
        return {c.entry_id: holder for c, holder in zip(cands, holders)}

    def _check_nonces(self, fresh: list[Candidate],
                      early: EarlyClaims | None = None) -> list[Candidate]:
        todo = [i for i, c in enumerate(fresh) if _undecided(c)]
        known = _early_result(early)
        missing = [fresh[i] for i in todo if fresh[i].entry_id not in known]
        if missing:  # no early claims, or they failed, or the candidate was not yet read
            known = {**known, **self._claims(missing)}
        out = list(fresh)
        for i in todo:
            cand = fresh[i]
            holder = known[cand.entry_id]
            if holder is not None and holder != cand.id:
                out[i] = cand.rejected_early("replay", "nonce already used by another intent")
        return out

    def _book(self, fresh: list[Candidate]) -> Book:
        wanted = {c.user_id for c in fresh} | set(SYSTEM_ACCOUNTS)
        self._cache_balances(wanted)
        settles = [c.intent.bet_id for c in fresh
                   if c.intent is not None and c.intent.kind == "settle"]
        bets = self._store.load_bets(settles) if settles else {}
        return Book({a: self.balances[a] for a in wanted if a in self.balances}, bets)

    def _cache_balances(self, wanted: set[int]) -> None:
        """Load the balances the cache lacks; past its bound it starts afresh."""
        missing = [a for a in wanted if a not in self.balances]
        if not missing:
            return
        if len(self.balances) + len(missing) > BALANCE_CACHE_SIZE_MAX:
            self.balances.clear()
            missing = list(wanted)
        self.balances.update(self._store.load_balances(missing))

    def _remember(self, book: Book) -> None:
        self.balances.update(book.balances)


def _undecided(cand: Candidate) -> bool:
    """Still to be checked and decided: no reason found yet, and a valid intent."""
    return cand.pre_reason is None and cand.intent is not None


def _claim(cand: Candidate) -> Claim:
    return (cand.kid, cand.intent.nonce, cand.id)  # type: ignore[union-attr]


def _early_result(early: EarlyClaims | None) -> Claims:
    """What the early claims found; nothing if there were none or Redis failed them (the
    caller then claims inline, where a failure is retried like any Redis step)."""
    if early is None:
        return {}
    if isinstance(early, dict):
        return early
    try:
        return early.result()
    except redis.RedisError:
        return {}


def _messages(outcomes: Sequence[OutcomeRow], ingress: list[int],
              repeats: Sequence[Repeat]) -> tuple[list[tuple], list[int]]:
    """New outcomes, then repeats with their original outcome (stored, or decided now), as
    message rows. ``ingress``: the new outcomes' ingress times; returned with the
    repeats' after them."""
    messages, ingress = [o.message_row() for o in outcomes], list(ingress)
    decided = {o.id: o for o in outcomes if o.reason != "id_conflict"}
    for rep in repeats:
        original = rep.outcome or decided.get(rep.candidate.id)
        if original is not None:
            messages.append(original.message_row(duplicate=rep.duplicate))
            ingress.append(rep.candidate.ingress_ms)
    return messages, ingress


def _committed(entries: Sequence[Entry], outcomes: Sequence[OutcomeRow], ingress: list[int],
               dead: Sequence[DeadLetter], repeats: Sequence[Repeat]) -> Committed:
    """What to ack and publish for a batch, and its report (commit_ms filled in later)."""
    messages, ingress = _messages(outcomes, ingress, repeats)
    finish = Finish([eid for eid, _ in entries], dead, messages, ingress)
    return Committed(finish, _report(entries, outcomes, ingress, dead, repeats, 0.0))


def _report(entries: Sequence[Entry], outcomes: Sequence[OutcomeRow], ingress: Sequence[int],
            dead: Sequence[DeadLetter], repeats: Sequence[Repeat], commit_ms: float) -> BatchReport:
    rejected = Counter(o.reason or "" for o in outcomes if o.status != ACCEPTED)
    accepted = len(outcomes) - rejected.total()
    oldest = ingress_ms(entries[0][0]) if entries else None  # one read: in stream order
    latencies = [o.committed_at - at for o, at in zip(outcomes, ingress)]
    return BatchReport(len(entries), accepted, rejected, Counter(d.reason for d in dead),
                       len(repeats), commit_ms, oldest, latencies)
