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

import msgspec

from producer.contract import MARKET_KINDS, now_ms
from producer.errors import InvariantViolation
from workers.adapters.intent_stream import Claims, Entry, Finish
from workers.adapters.ledger_store import Store
from workers.core.batch_rows import BatchWrite, OutcomeRow, build_batch
from workers.core.decision import (
    ACCEPTED,
    HOLD_CLOSING_KINDS,
    MARKET_CLOSED,
    MARKET_OPEN,
    SYSTEM_ACCOUNTS,
    BetState,
    Book,
    Candidate,
    HoldState,
    MarketChange,
    decide_batch,
)
from workers.core.hold_expiry import expiry_candidates
from workers.core.intake import DeadLetter, ingress_ms, reject_replays, reject_stale
from workers.core.market_settlement import Settlement, chunk_candidates, chunk_change
from workers.core.repeats import Repeat, split_repeats
from workers.settings import Settings
from workers.writer.batch_source import Batch
from workers.writer.hooks import BatchReport

BALANCE_CACHE_SIZE_MAX: Final = 1_000_000  # accounts; past this the cache starts afresh
MARKET_CACHE_SIZE_MAX: Final = 100_000  # markets; past this the cache starts afresh
MARKET_NAMING_KINDS: Final = frozenset({"bet", *MARKET_KINDS})  # intents with a ``market``
SETTLE_KINDS: Final = frozenset({"settle"})  # intents with a ``bet_id``
HOLD_EXPIRIES_PER_BATCH_MAX: Final = 1_000  # holds one batch voids for their time


@dataclass(frozen=True, slots=True)
class Chunk:
    """The next bets of a market being settled: the writer's settle candidates for them,
    the bets, and where the settlement stands once they commit."""

    candidates: list[Candidate]
    bets: dict[str, BetState]
    change: MarketChange


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
    ingress: list[int | None]  # the new outcomes' ingress times, in order (None: the writer's)
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
    def __init__(self, settings: Settings, store: Store,
                 stream_clock: Callable[[], int] = now_ms) -> None:
        """``stream_clock``: the clock ingress times come from (Redis's): holds fall due by
        it, never by ours."""
        self._s = settings
        self._store = store
        self._stream_clock = stream_clock
        self.balances: dict[int, int] = {}  # cache; valid only while we hold the epoch
        self.markets: dict[str, str] = {}  # cache of market states, "open" included
        self.settlements: list[Settlement] | None = None  # None: read them from the ledger
        self.hold_due_ms: int | None = None  # when the next open hold falls due
        self._hold_due_known = False  # False: read it from the ledger
        self._committer: ThreadPoolExecutor | None = None  # made on first overlapped commit

    def close(self) -> None:
        if self._committer is not None:
            self._committer.shutdown(wait=True)

    def forget(self, accounts: Sequence[int] | None = None,
               markets: Sequence[str] = ()) -> None:
        """Drop cached balances and market states (all, or those a failed batch touched);
        the settlements and the next hold due are read from the ledger again either way."""
        if accounts is None:
            self.balances.clear()
            self.markets.clear()
        else:
            for account in accounts:
                self.balances.pop(account, None)
            for market in markets:
                self.markets.pop(market, None)
        self.settlements = None
        self._hold_due_known = False

    def decide(self, batch: Batch, claims: Claims, now: int, epoch: int) -> Decided:
        """Repeats, freshness at ``now``, replays (``claims``: the nonce claims of every
        candidate fresh at ``now``), then the decisions and the rows that record them.
        Writes nothing: may be run again after any failure."""
        candidates = batch.candidates
        stored = self._store.lookup([c.id for c in candidates], [c.entry_id for c in candidates])
        fresh, repeats = split_repeats(candidates, stored)
        fresh = reject_stale(fresh, now, self._s.intent_age_max_ms, self._s.clock_skew_max_ms)
        fresh = reject_replays(fresh, claims)
        chunk = self._next_chunk(now)
        closing = _named(fresh, "hold_id", HOLD_CLOSING_KINDS)  # holds the batch posts or voids
        expiring = self._holds_due(self._stream_time(batch), closing)
        own = [*(chunk.candidates if chunk else []), *expiry_candidates(expiring, now)]
        todo = [*fresh, *own]
        decisions, after = decide_batch(todo, self._book(todo, chunk, expiring, closing))
        _require_own_work_accepted(decisions[len(decisions) - len(own):])
        change = chunk.change if chunk is not None else None
        write = (build_batch(decisions, self._store.heads, epoch, now_ms(), change)
                 if decisions or change is not None else None)
        # (the writer's own work, last, has no ingress: measured from now, it would flatter)
        stream_decided = len(decisions) - len(own)
        ingress: list[int | None] = [d.candidate.ingress_ms
                                     for d in decisions[:stream_decided]]
        ingress += [None] * len(own)
        return Decided(batch, write, ingress, repeats, after)

    def has_chores(self) -> bool:
        """Whether the writer has work of its own with nothing read: a market to settle, a
        hold that has fallen due."""
        due = self._hold_due()
        return bool(self._settlements()) or (due is not None and due <= self._stream_clock())

    def _hold_due(self) -> int | None:
        if not self._hold_due_known:
            self.hold_due_ms = self._store.next_hold_due()
            self._hold_due_known = True
        return self.hold_due_ms

    def _stream_time(self, batch: Batch) -> int:
        """A time no intent still to be decided reached the stream before: the last entry
        of this batch (later entries come after it), or, with none read, Redis's clock
        now (an entry added later gets a later id)."""
        return ingress_ms(batch.entries[-1][0]) if batch.entries else self._stream_clock()

    def _holds_due(self, stream_ms: int, closing: set[str]) -> list[HoldState]:
        """Open holds due by ``stream_ms``: every post or void that reached the stream in
        time has been decided by then. Not those this batch's own intents close
        (``closing``): they are decided first (a void after their post would be refused)."""
        due = self._hold_due()
        if due is None or due > stream_ms:
            return []
        self._hold_due_known = False  # read again once these are closed
        return [h for h in self._store.holds_due(stream_ms, HOLD_EXPIRIES_PER_BATCH_MAX)
                if h.id not in closing]

    def _settlements(self) -> list[Settlement]:
        """Markets being settled, oldest first; read from the ledger after a lead or a
        failed commit, then followed from our own commits."""
        if self.settlements is None:
            self.settlements = [Settlement.of(*row) for row in self._store.load_settlements()]
        return self.settlements

    def _next_chunk(self, now: int) -> Chunk | None:
        settlements = self._settlements()
        if not settlements:
            return None
        first, chunk_max = settlements[0], self._s.settle_chunk_bets_max
        bets = self._store.open_bets_after(first.market, first.through, first.seq, chunk_max)
        return Chunk(chunk_candidates(first, bets, now), {b.id: b for b in bets},
                     chunk_change(first, bets, chunk_max))

    def _follow_holds(self, write: BatchWrite) -> None:
        """Our committed holds: a new one with a time may fall due first."""
        if not self._hold_due_known:
            return
        for _, _, _, expires_at, _ in write.new_holds:
            if expires_at is not None and (self.hold_due_ms is None
                                           or expires_at < self.hold_due_ms):
                self.hold_due_ms = expires_at

    def _follow(self, change: MarketChange, seq: int) -> None:
        """Our committed market change (made by the outcome ``seq``), in the caches."""
        self.markets[change.market] = change.state
        if self.settlements is None:
            return
        if change.settlement is not None:
            self.settlements.append(Settlement.of(change.market, change.settlement, 0, seq))
        elif change.state == MARKET_CLOSED:
            self.settlements = [s for s in self.settlements if s.market != change.market]
        elif change.settled_through is not None:
            self.settlements = [msgspec.structs.replace(s, through=change.settled_through)
                                if s.market == change.market else s for s in self.settlements]

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
            self.forget(list(decided.book_after.balances), list(decided.book_after.markets))
            raise
        self.balances.update(decided.book_after.balances)
        self.markets.update(decided.book_after.markets)
        for change, seq in decided.write.market_changes:
            self._follow(change, seq)
        self._follow_holds(decided.write)
        return took_ms

    def _timed_commit(self, write: BatchWrite | None) -> float:
        started = time.perf_counter()
        self._store.commit(write)  # type: ignore[arg-type]  (None never reaches here)
        return (time.perf_counter() - started) * 1000

    def _book(self, fresh: list[Candidate], chunk: Chunk | None,
              expiring: list[HoldState], closing: set[str]) -> Book:
        """The balances, bets, market states and holds the batch's decisions read
        (``closing``: the holds its intents post or void)."""
        wanted = {c.user_id for c in fresh} | set(SYSTEM_ACCOUNTS)
        self._cache_balances(wanted)
        bets = dict(chunk.bets) if chunk is not None else {}
        settles = _named(fresh, "bet_id", SETTLE_KINDS) - bets.keys()
        if settles:  # a settle of a bet on a market being resulted is already_settled
            bets.update(self._store.load_bets(settles))
        markets = self._market_states(_named(fresh, "market", MARKET_NAMING_KINDS)
                                      | {b.market for b in bets.values()})
        holds = {h.id: h for h in expiring}
        if stored := closing - holds.keys():
            holds.update(self._store.load_holds(stored))
        return Book({a: self.balances[a] for a in wanted if a in self.balances}, bets, markets,
                    holds)

    def _market_states(self, names: set[str]) -> dict[str, str]:
        """The markets among ``names`` that are not open (suspended or closed), from the
        cache, which loads what it lacks; past its bound it starts afresh."""
        missing = [m for m in names if m not in self.markets]
        if missing:
            if len(self.markets) + len(missing) > MARKET_CACHE_SIZE_MAX:
                self.markets.clear()
                missing = list(names)
            stored = self._store.load_markets(missing)
            self.markets.update({m: stored.get(m, MARKET_OPEN) for m in missing})
        return {m: state for m in names if (state := self.markets[m]) != MARKET_OPEN}

    def _cache_balances(self, wanted: set[int]) -> None:
        """Load the balances the cache lacks; past its bound it starts afresh."""
        missing = [a for a in wanted if a not in self.balances]
        if not missing:
            return
        if len(self.balances) + len(missing) > BALANCE_CACHE_SIZE_MAX:
            self.balances.clear()
            missing = list(wanted)
        self.balances.update(self._store.load_balances(missing))


def _require_own_work_accepted(decisions: Sequence) -> None:
    """The writer's own settles and voids target what it found open: a refusal would move
    its cursor past a bet, or stall on a hold, so it is a bug (never retried)."""
    for d in decisions:
        if d.status != ACCEPTED:
            raise InvariantViolation(f"the writer's own {d.candidate.kind} "
                                     f"{d.candidate.id} was refused: {d.reason}")


def _named(fresh: Sequence[Candidate], field: str, kinds: frozenset[str]) -> set[str]:
    """The ``field`` (a bet id, a market) of every candidate of these kinds with an intent."""
    return {getattr(c.intent, field) for c in fresh if c.intent is not None and c.kind in kinds}


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
    latencies = [o.committed_at - at for o, at in zip(outcomes, ingress) if at is not None]
    return BatchReport(len(entries), accepted, rejected, Counter(d.reason for d in dead),
                       len(repeats), commit_ms, oldest, latencies)
