"""One batch, in the order that makes it correct (docs/architecture.md, writer rules 3 and 4).

(admitted by workers/writer/batch_source.py) -> repeats -> freshness -> nonces -> decide
-> ONE transaction -> (caller) ack + confirm. Everything before COMMIT may be run again
after a failure: lookups are repeated, nonce claims recognise their own intent id, and
the balance cache is only updated after a successful commit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from producer.contract import now_ms
from workers.adapters.intent_stream import Claims, Entry, Finish
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import BatchWrite, OutcomeRow, build_batch
from workers.core.decision import ACCEPTED, SYSTEM_ACCOUNTS, Book, Candidate, decide_batch
from workers.core.intake import DeadLetter, ingress_ms, reject_replays, reject_stale
from workers.core.repeats import Repeat, split_repeats
from workers.settings import Settings
from workers.writer.batch_source import Batch
from workers.writer.hooks import BatchReport

BALANCE_CACHE_SIZE_MAX: Final = 1_000_000  # accounts; past this the cache starts afresh


@dataclass(frozen=True, slots=True)
class Committed:
    finish: Finish
    report: BatchReport


@dataclass(frozen=True, slots=True)
class Decided:
    """A batch decided: what to write (None: nothing new, only repeats or dead letters),
    and the balances as they will be once it is written."""

    batch: Batch
    write: BatchWrite | None
    ingress: list[int]  # the new outcomes' ingress times, in order
    repeats: list[Repeat]
    book_after: Book

    def confirmations(self, commit_ms: float = 0.0) -> Committed:
        """What to ack, dead-letter and answer once (and only if) the write is durable
        (pure)."""
        outcomes = self.write.outcomes if self.write is not None else []
        entries = self.batch.entries
        finish = Finish([eid for eid, _ in entries], self.batch.dead,
                        _duplicates(outcomes, self.repeats))
        return Committed(finish, _report(entries, outcomes, self.ingress, self.batch.dead,
                                         self.repeats, commit_ms))


class BatchPipeline:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._s = settings
        self._store = store
        self.balances: dict[int, int] = {}  # cache; valid only while we hold the epoch
        self._committer: ThreadPoolExecutor | None = None  # made on first overlapped commit

    def close(self) -> None:
        if self._committer is not None:
            self._committer.shutdown(wait=True)

    def forget(self, accounts: Sequence[int] | None = None) -> None:
        """Drop cached balances (all, or those a failed batch touched)."""
        if accounts is None:
            self.balances.clear()
        else:
            for account in accounts:
                self.balances.pop(account, None)

    def decide(self, batch: Batch, claims: Claims, now: int, epoch: int) -> Decided:
        """Repeats, freshness at ``now``, replays (``claims``: the nonce claims of every
        candidate fresh at ``now``), then the decisions and the rows that record them.
        Writes nothing: may be run again after any failure."""
        candidates = batch.candidates
        stored = self._store.lookup([c.id for c in candidates], [c.entry_id for c in candidates])
        fresh, repeats = split_repeats(candidates, stored)
        fresh = reject_stale(fresh, now, self._s.intent_age_max_ms, self._s.clock_skew_max_ms)
        fresh = reject_replays(fresh, claims)
        decisions, after = decide_batch(fresh, self._book(fresh))
        write = build_batch(decisions, self._store.heads, epoch, now_ms()) if decisions else None
        return Decided(batch, write, [d.candidate.ingress_ms for d in decisions], repeats, after)

    def commit(self, decided: Decided) -> float:
        """Durably commit here; returns the commit's own duration in ms."""
        return self._applied(decided, lambda: self._timed_commit(decided.write))

    def start_commit(self, decided: Decided) -> Future[float]:
        """Commit on the committer thread: SQLite releases the GIL, so this thread's other
        work overlaps it. ``wait_commit`` then returns once it is durable."""
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="committer")
        return self._committer.submit(self._timed_commit, decided.write)

    def wait_commit(self, decided: Decided, started: Future[float]) -> float:
        return self._applied(decided, started.result)

    def _applied(self, decided: Decided, commit: Callable[[], float]) -> float:
        """The balance cache follows the ledger: updated once the write is durable,
        emptied of what the batch touched if it failed."""
        if decided.write is None:
            return 0.0
        try:
            took_ms = commit()
        except Exception:
            self.forget(list(decided.book_after.balances))
            raise
        self.balances.update(decided.book_after.balances)
        return took_ms

    def _timed_commit(self, write: BatchWrite | None) -> float:
        started = time.perf_counter()
        self._store.commit(write)  # type: ignore[arg-type]  (None never reaches here)
        return (time.perf_counter() - started) * 1000

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


def _duplicates(outcomes: Sequence[OutcomeRow], repeats: Sequence[Repeat]) -> list[tuple]:
    """The answers to re-sent intents (same id, another entry): their original outcome
    (stored, or decided in this batch), marked ``duplicate``, as message rows. New
    outcomes are not here: the confirmer publishes them from the ledger, and a redelivered
    entry's outcome with them."""
    decided = {o.id: o for o in outcomes if o.reason != "id_conflict"}
    messages = []
    for rep in repeats:
        original = rep.outcome or decided.get(rep.candidate.id)
        if rep.duplicate and original is not None:
            messages.append(original.message_row(duplicate=True))
    return messages


def _report(entries: Sequence[Entry], outcomes: Sequence[OutcomeRow], ingress: Sequence[int],
            dead: Sequence[DeadLetter], repeats: Sequence[Repeat], commit_ms: float) -> BatchReport:
    rejected = Counter(o.reason or "" for o in outcomes if o.status != ACCEPTED)
    accepted = len(outcomes) - rejected.total()
    oldest = ingress_ms(entries[0][0]) if entries else None  # one read: in stream order
    latencies = [o.committed_at - at for o, at in zip(outcomes, ingress)]
    return BatchReport(len(entries), accepted, rejected, Counter(d.reason for d in dead),
                       len(repeats), commit_ms, oldest, latencies)
