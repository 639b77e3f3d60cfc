"""Load generator: realistic signed intents at a steady or unlimited rate, with progress.

Deposits fund every user first, then bets (with some hot users, a share of withdrawals, of
settlements of this load's own recent bets, and of deliberate re-sends) stream at ``rate``
per second. Bodies are built as plain dicts and
encoded once: the hot path signs and XADDs, it does not re-validate what it just built.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import redis

from producer.backoff import backoff_ms
from producer.client import Producer, entry_fields
from producer.contract import encode_body, new_intent_id, new_nonce, now_ms
from producer.errors import BreakerOpen
from producer.signing import Key

CHUNK_SIZE_MAX: Final = 500  # intents per pipelined round trip
# Paced loads send this often. Every send is a round trip that wakes Redis and the reading
# side: at 100 sends/s, streaming 15,000/s cost 6-10 % more CPU over all processes than at
# 33 (producers, Redis and the admission child; docs/performance.md).
SENDS_PER_S: Final = 33
RECENT_MAX: Final = 100  # duplicates are drawn from this many recent intents
SHED_WAIT_MAX_S: Final = 5.0  # longest back-off after the breaker refused a chunk
ODDS_CHOICES: Final = ("1.25", "1.50", "1.90", "2.00", "2.50", "3.10", "5.00", "12.00")
MARKETS: Final = 20
MARKET_PREFIX: Final = "market-"  # --markets: market-<seed or a fresh tag>-<n>
MARKET_TAG_LEN: Final = 6
MARKET_OPS_PER_MARKET: Final = 2  # suspensions and resumptions over a load, per market
SETTLE_OUTCOMES: Final = ("won", "lost", "void")
SETTLE_UNKNOWN_SHARE: Final = 0.05  # of settlements: a bet id that was never placed
SETTLE_AGAIN_SHARE: Final = 0.05  # of settlements: a bet this load settled already
REDIS_WAIT_S_DEFAULT: Final = 60.0  # ride out a Redis outage this long, then give up
REDIS_RETRY_MIN_MS: Final = 100  # backoff between re-sends while Redis is away
REDIS_RETRY_MAX_MS: Final = 2_000


@dataclass(frozen=True)
class LoadPlan:
    users: int
    bets: int
    rate: float = 0.0  # intents per second; 0 = as fast as Redis takes them
    user_first: int = 1
    deposit: int = 100_000  # minor units per user
    stake_max: int = 5_000
    hot_users: int = 10  # a share of bets goes to a few hot users (realistic skew)
    hot_share: float = 0.2
    withdrawal_share: float = 0.0
    settle_share: float = 0.0  # settle one of this load's recent bets (won / lost / void)
    duplicate_share: float = 0.0  # re-send an earlier intent unchanged (same id and nonce)
    seed: int | None = None
    # Markets with a life (contract v1.1): bets spread over this many, some suspended and
    # resumed on the way, every one resulted (settle_market) at the end. 0: the MARKETS
    # fixed markets, never suspended nor resulted.
    markets: int = 0


@dataclass
class LoadResult:
    sent: int = 0
    duplicates: int = 0
    shed: int = 0  # intents refused by the circuit breaker (each later sent again)
    shed_wait_s: float = 0.0
    redis_retries: int = 0  # chunks re-sent because Redis was unreachable
    redis_wait_s: float = 0.0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def _body(kind: str, user_id: int, **extra: Any) -> dict[str, Any]:
    return {"id": new_intent_id(), "kind": kind, "user_id": user_id, "nonce": new_nonce(),
            "issued_at": now_ms(), **extra}


@dataclass
class _SettleBook:
    """This load's recent bets: settlements refer to them (the writer decides if they exist)."""

    placed: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=RECENT_MAX))
    settled: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=RECENT_MAX))


def _settle(rng: random.Random, book: _SettleBook, user: int) -> dict[str, Any]:
    """Settle a recent bet; now and then one never placed or settled already, so the
    writer's ``unknown_bet`` and ``already_settled`` paths see real traffic too."""
    draw = rng.random()
    if draw < SETTLE_AGAIN_SHARE and book.settled:
        bet_id, user = rng.choice(book.settled)
    elif draw < SETTLE_AGAIN_SHARE + SETTLE_UNKNOWN_SHARE or not book.placed:
        bet_id = new_intent_id()
    else:
        index = rng.randrange(len(book.placed))
        bet_id, user = book.placed[index]
        del book.placed[index]
        book.settled.append((bet_id, user))
    return _body("settle", user, bet_id=bet_id, outcome=rng.choice(SETTLE_OUTCOMES))


def intents(plan: LoadPlan, rng: random.Random) -> Iterator[dict[str, Any]]:
    """Deposits for every user, then the bet stream (bodies as dicts, in send order).

    A settlement always follows the bet it refers to, so it is in the stream after it.
    The bet path draws with ``_below`` and builds its dict in place: a producer streaming
    at its share of 30,000/s spends most of its CPU here (docs/performance.md)."""
    first, last_user = plan.user_first, plan.user_first + plan.users - 1
    for user in range(first, last_user + 1):
        yield _body("deposit", user, amount=plan.deposit)
    # a load's own markets: its seed's, or a fresh tag, so two loads never share one
    tag = str(plan.seed) if plan.seed is not None else new_nonce()[:MARKET_TAG_LEN]
    if plan.markets:
        yield from _with_market_life(_bets_and_more(plan, rng, tag), plan, rng, tag)
    else:
        yield from _bets_and_more(plan, rng, tag)


def _bets_and_more(plan: LoadPlan, rng: random.Random, tag: str) -> Iterator[dict[str, Any]]:
    first = plan.user_first
    hot = min(plan.hot_users, plan.users)
    book = _SettleBook()
    bits, draw = rng.getrandbits, rng.random
    for _ in range(plan.bets):
        if hot and draw() < plan.hot_share:
            user = first + _below(bits, hot)  # rng.randrange(hot)
        else:
            user = first + _below(bits, plan.users)  # rng.randint(first, last_user)
        if plan.settle_share and draw() < plan.settle_share:
            yield _settle(rng, book, user)
            continue
        if draw() < plan.withdrawal_share:
            yield _body("withdrawal", user, amount=1 + _below(bits, plan.stake_max))
            continue
        amount = 1 + _below(bits, plan.stake_max)  # rng.randint(1, stake_max); order kept
        market = (f"match-{_below(bits, MARKETS)}" if not plan.markets
                  else market_name(tag, _below(bits, plan.markets)))
        selection = "12X"[_below(bits, 3)]
        bet = {"id": new_intent_id(), "kind": "bet", "user_id": user, "nonce": new_nonce(),
               "issued_at": now_ms(), "amount": amount, "market": market,
               "selection": selection, "odds": ODDS_CHOICES[_below(bits, len(ODDS_CHOICES))]}
        book.placed.append((bet["id"], user))
        yield bet


def market_name(tag: str, index: int) -> str:
    return f"{MARKET_PREFIX}{tag}-{index}"


def _market_body(kind: str, market: str, **extra: Any) -> dict[str, Any]:
    return {"id": new_intent_id(), "kind": kind, "market": market, "nonce": new_nonce(),
            "issued_at": now_ms(), **extra}


def market_intents(plan: LoadPlan) -> int:
    """How many market intents ``--markets`` adds to the plan's intents."""
    if not plan.markets:
        return 0
    toggles = plan.bets // _market_op_every(plan)
    return toggles + toggles % 2 + plan.markets  # a last resume, then every result


def _market_op_every(plan: LoadPlan) -> int:
    return max(1, plan.bets // (MARKET_OPS_PER_MARKET * plan.markets))


def _with_market_life(stream: Iterator[dict[str, Any]], plan: LoadPlan, rng: random.Random,
                      tag: str) -> Iterator[dict[str, Any]]:
    """``stream`` with a market suspended (or the suspended one resumed) every so often,
    and every market resulted at the end: selection 1 won, X void, the others lost."""
    every = _market_op_every(plan)
    suspended: str | None = None
    for n, body in enumerate(stream, start=1):
        yield body
        if n % every == 0:
            if suspended is None:
                suspended = market_name(tag, rng.randrange(plan.markets))
                yield _market_body("suspend_market", suspended)
            else:
                yield _market_body("resume_market", suspended)
                suspended = None
    if suspended is not None:
        yield _market_body("resume_market", suspended)
    for index in range(plan.markets):
        yield _market_body("settle_market", market_name(tag, index),
                           results={"1": "won", "X": "void"}, others="lost")


def _below(getrandbits: Callable[[int], int], n: int) -> int:
    """What ``Random.randrange(n)`` draws for ``n > 0`` (CPython's rejection sampling over
    ``getrandbits``), in one call where ``randint`` takes three: the same sequence for a
    seed (tests/unit/test_load.py keeps a fingerprint of it)."""
    k = n.bit_length()
    r = getrandbits(k)
    while r >= n:
        r = getrandbits(k)
    return r


def run_load(producer: Producer, plan: LoadPlan,
             progress: Callable[[int, int], None] | None = None,
             redis_wait_s: float = REDIS_WAIT_S_DEFAULT) -> LoadResult:
    """Send the plan; ``progress(done, total)`` is called after every chunk, counting the
    plan's intents sent (re-sent duplicates come on top of ``total``).

    While Redis is unreachable (restarting, loading its AOF) a chunk is re-sent with backoff
    for up to ``redis_wait_s`` per outage, then the error is raised. A re-sent chunk may
    repeat entries Redis had taken before the connection broke: same id and nonce, so the
    writer answers them ``duplicate`` and applies each intent once.
    """
    rng = random.Random(plan.seed)
    total = plan.users + plan.bets + market_intents(plan)
    result = LoadResult()
    started = time.perf_counter()
    chunk: list[dict[str, Any]] = []
    chunk_size = chunk_size_for(plan.rate)
    recent: deque[dict[str, str | bytes]] = deque(maxlen=RECENT_MAX)
    keys: dict[str, Key] = {}  # per chunk: built in far less than signing.RETIRE_MARGIN_MS
    for body in intents(plan, rng):
        kind = body["kind"]
        result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
        key = keys.get(kind) or keys.setdefault(kind, producer.key_for(kind))
        fields = entry_fields(key, encode_body(body))
        chunk.append(fields)
        if recent and rng.random() < plan.duplicate_share:
            chunk.append(rng.choice(recent))
            result.duplicates += 1
        recent.append(fields)
        if len(chunk) >= chunk_size:
            _send(producer, chunk, result, started, plan.rate, progress, total, redis_wait_s)
            chunk, keys = [], {}
    if chunk:
        _send(producer, chunk, result, started, plan.rate, progress, total, redis_wait_s)
    result.seconds = time.perf_counter() - started
    return result


def chunk_size_for(rate: float) -> int:
    """Unlimited: big chunks. Paced: SENDS_PER_S sends per second, so the rate stays smooth."""
    if rate <= 0:
        return CHUNK_SIZE_MAX
    return max(1, min(CHUNK_SIZE_MAX, int(rate / SENDS_PER_S)))


def _send(producer: Producer, chunk: list, result: LoadResult, started: float, rate: float,
          progress: Callable[[int, int], None] | None, total: int, redis_wait_s: float) -> None:
    if rate > 0:  # pace: the chunk may go once the schedule says so
        due = started + (result.sent + len(chunk)) / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    outage_started, attempt = None, 0
    while True:
        try:
            producer.submit_fields(chunk)
            break
        except BreakerOpen as exc:  # nothing was sent: back off, then offer the chunk again
            result.shed += len(chunk)
            pause = min(exc.retry_after, SHED_WAIT_MAX_S)
            result.shed_wait_s += pause
            time.sleep(pause)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # incl. LOADING
            outage_started = outage_started or time.monotonic()
            away_s = time.monotonic() - outage_started
            if away_s >= redis_wait_s:
                raise redis.ConnectionError(
                    f"gave up after {away_s:.0f}s (--redis-wait {redis_wait_s:g}); "
                    f"{result.sent} intents were acknowledged before: {exc}") from exc
            attempt += 1
            pause = backoff_ms(attempt, REDIS_RETRY_MIN_MS, REDIS_RETRY_MAX_MS) / 1000
            result.redis_retries += 1
            result.redis_wait_s += pause
            time.sleep(pause)
    result.sent += len(chunk)
    if progress:  # re-sent copies are on top of the plan's intents, not part of its total
        progress(result.sent - result.duplicates, total)
