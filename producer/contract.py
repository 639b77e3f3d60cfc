"""Wire contract v1: the intent bodies upstream services sign (docs/wire-contract.md).

The models are strict on purpose: money amounts are integers in minor units, and a float,
a bool, an unknown field or an out-of-range value is refused before anything is signed or
sent. The writer validates again with the same models, so both ends share one definition.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import uuid
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Union

import msgspec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from producer.entropy import BLOCK_BYTES, RandomBlocks
from producer.errors import ContractError
from producer.invariants import require

MARKET_KINDS: Final = ("suspend_market", "resume_market", "settle_market")  # v1.1: no user_id
HOLD_KINDS: Final = ("withdrawal_hold", "withdrawal_post", "withdrawal_void")  # v1.1
HOLD_TIMEOUT_S_MAX: Final = 2_592_000  # 30 days
RESULTS_MAX: Final = 64  # selections a settle_market may name
KINDS: Final = ("bet", "deposit", "withdrawal", "settle", *MARKET_KINDS, *HOLD_KINDS)
MARKET_USER_ID: Final = 0  # a market intent's own outcome belongs to no player
USER_ID_MAX: Final = 2**53 - 1  # JSON-safe integer: browsers receive user ids too.
AMOUNT_MAX: Final = 10**15  # minor units; keeps every sum far below 2**63.
ISSUED_AT_MAX: Final = 2**53 - 1
NONCE_LEN_MIN: Final = 16
NONCE_LEN_MAX: Final = 64
TEXT_LEN_MAX: Final = 64
ODDS_MIN_X100: Final = 101
ODDS_MAX_X100: Final = 100_000
BODY_BYTES_MAX: Final = 4096  # a valid body is well under 1 KiB; anything larger is hostile.

_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ODDS_RE: Final = re.compile(r"^(0|[1-9][0-9]{0,3})(\.[0-9]{1,2})?$")


def _canonical_uuid(value: str) -> str:
    """Ids are idempotency keys, so exactly one spelling is allowed: lowercase canonical."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ValueError("must be a UUID") from None
    if str(parsed) != value:
        raise ValueError("must be a UUID in lowercase canonical form (8-4-4-4-12)")
    return value


def is_canonical_uuid(value: str) -> bool:
    try:
        _canonical_uuid(value)
    except ValueError:
        return False
    return True


def _odds(value: str) -> str:
    if not _ODDS_RE.fullmatch(value):
        raise ValueError("must be a decimal string with at most 2 decimal places")
    x100 = odds_x100(value)
    if not ODDS_MIN_X100 <= x100 <= ODDS_MAX_X100:
        raise ValueError("must be between 1.01 and 1000.00")
    return value


def _plain_text(value: str) -> str:
    """Market and selection names are shown to people: no control or format characters."""
    if any(unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in value):
        raise ValueError("must not contain control, format, line-separator or unassigned "
                         "characters")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


def odds_x100(odds: str) -> int:
    """Odds as an integer number of hundredths ("2.50" -> 250): payouts never touch floats."""
    return int(Decimal(odds) * 100)


UuidStr = Annotated[str, AfterValidator(_canonical_uuid)]
UserId = Annotated[int, Field(gt=0, le=USER_ID_MAX)]
Amount = Annotated[int, Field(gt=0, le=AMOUNT_MAX)]
Nonce = Annotated[str, Field(min_length=NONCE_LEN_MIN, max_length=NONCE_LEN_MAX)]
IssuedAt = Annotated[int, Field(ge=0, le=ISSUED_AT_MAX)]
Text = Annotated[str, Field(min_length=1, max_length=TEXT_LEN_MAX), AfterValidator(_plain_text)]
Odds = Annotated[str, AfterValidator(_odds)]


class _IntentBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: UuidStr
    user_id: UserId
    nonce: Nonce
    issued_at: IssuedAt


class DepositIntent(_IntentBase):
    """Money in from the outside world (cash account 0 -> player)."""

    kind: Literal["deposit"]
    amount: Amount


class WithdrawalIntent(_IntentBase):
    """Money out to the outside world (player -> cash account 0)."""

    kind: Literal["withdrawal"]
    amount: Amount


class BetIntent(_IntentBase):
    """A stake moved from the player into escrow until the bet settles; ``id`` is the bet id."""

    kind: Literal["bet"]
    amount: Amount
    market: Text
    selection: Text
    odds: Odds


class SettleIntent(_IntentBase):
    """Settles one bet; the payout is computed by the writer, never supplied."""

    kind: Literal["settle"]
    bet_id: UuidStr
    outcome: Literal["won", "lost", "void"]


class WithdrawalHoldIntent(_IntentBase):
    """Contract v1.1: a cash-out reserved (player -> pending account -3) until a payment
    provider answers; posted (pending -> cash) or voided (back to the player) later, by
    ``hold_id`` = this intent's id. With ``timeout_s``, a hold neither posted nor voided
    in time is voided by the writer itself."""

    kind: Literal["withdrawal_hold"]
    amount: Amount
    timeout_s: Annotated[int, Field(ge=1, le=HOLD_TIMEOUT_S_MAX)] | None = None


class WithdrawalPostIntent(_IntentBase):
    """The provider paid: the held amount leaves (pending -> cash)."""

    kind: Literal["withdrawal_post"]
    hold_id: UuidStr


class WithdrawalVoidIntent(_IntentBase):
    """The provider refused: the held amount goes back to the player."""

    kind: Literal["withdrawal_void"]
    hold_id: UuidStr


class _MarketIntentBase(BaseModel):
    """Contract v1.1: an operation on a whole market, signed by a trading desk's key. It
    names no player: its own outcome has ``user_id`` 0."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: UuidStr
    market: Text
    nonce: Nonce
    issued_at: IssuedAt

    @property
    def user_id(self) -> int:
        return MARKET_USER_ID


class SuspendMarketIntent(_MarketIntentBase):
    """From the batch that commits it on, bets on ``market`` are rejected
    ``market_suspended`` (until a ``resume_market``)."""

    kind: Literal["suspend_market"]


class ResumeMarketIntent(_MarketIntentBase):
    """Lifts a suspension: bets on ``market`` are taken again."""

    kind: Literal["resume_market"]


Result = Literal["won", "lost", "void"]


class SettleMarketIntent(_MarketIntentBase):
    """Results a whole market: every open bet on it settles exactly once, ``results[its
    selection]`` if named, else ``others``; the market is then closed."""

    kind: Literal["settle_market"]
    results: Annotated[dict[Text, Result], Field(min_length=1, max_length=RESULTS_MAX)]
    others: Literal["lost", "void"]

    def result_of(self, selection: str) -> str:
        return self.results.get(selection, self.others)


MarketIntent = SuspendMarketIntent | ResumeMarketIntent | SettleMarketIntent
Intent = Annotated[
    Union[DepositIntent, WithdrawalIntent, BetIntent, SettleIntent, SuspendMarketIntent,
          ResumeMarketIntent, SettleMarketIntent, WithdrawalHoldIntent, WithdrawalPostIntent,
          WithdrawalVoidIntent], Field(discriminator="kind")
]
_INTENT_ADAPTER: Final = TypeAdapter(Intent)


def parse_intent(body: bytes) -> Intent:
    """Validate a body as stored in the stream; raise :class:`ContractError` with the cause."""
    if len(body) > BODY_BYTES_MAX:
        raise ContractError(f"body is {len(body)} bytes, over {BODY_BYTES_MAX}", "too_large")
    try:
        return _INTENT_ADAPTER.validate_python(load_json_object(body), strict=True)
    except ValidationError as exc:
        raise ContractError(_describe(exc)) from None


def load_json_object(body: bytes) -> Any:
    """Strict JSON: UTF-8 only, no repeated keys, no NaN/Infinity.

    A repeated key would let two parsers read different amounts from the same signed
    bytes (one keeps the first value, another the last), so it is refused outright.
    """
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise ContractError("body: Invalid JSON: not UTF-8") from None
    except RecursionError:
        raise ContractError("body: Invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ContractError(f"body: Invalid JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"repeated key {repeated!r}")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Built once: json.loads(..., hook=...) builds a new decoder per call (~1.3 us per body).
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def _describe(exc: ValidationError) -> str:
    """One short line per failing field, e.g. ``amount: Input should be a valid integer``."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_PLAIN_TYPES: Final = frozenset({str, int, bool, type(None)})
_SORTED_JSON: Final = msgspec.json.Encoder(order="sorted")


def encode_body(fields: dict[str, Any]) -> bytes:
    """Compact JSON with sorted keys, as the contract asks producers to emit.

    A body of plain values (every intent's) goes through msgspec: the same bytes as
    ``json.dumps`` (tests/unit/test_contract.py, hypothesis) in a tenth of the time, which
    a producer pays per intent. Anything else (floats, which the two format differently,
    nesting, keys that are not str) keeps ``json.dumps``."""
    if _PLAIN_TYPES.issuperset(map(type, fields.values())):  # all() over a genexpr: 2x
        try:
            return _SORTED_JSON.encode(fields)
        except TypeError:  # a key that is not a str: json.dumps turns it into one
            pass
    return json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def intent_body(intent: Intent) -> bytes:
    """The exact bytes that are signed and stored for a validated intent (an optional field
    left out is absent, not null)."""
    return encode_body(intent.model_dump(exclude_none=True))


NONCE_RANDOM_BYTES: Final = 16
UUID7_RAND_HEX: Final = 19  # hex digits of random bits an id takes: 74 bits, 2 spare
# The variant digit: 0b10, then the 2 low bits of a random hex digit (RFC 9562).
_UUID7_VARIANT: Final = {d: "89ab"[int(d, 16) & 0b11] for d in "0123456789abcdef"}
require(NONCE_RANDOM_BYTES <= BLOCK_BYTES and UUID7_RAND_HEX <= 2 * BLOCK_BYTES,
        "one random block must hold a nonce's and an id's random bits")
_RANDOM: Final = RandomBlocks()  # one per process: it re-draws in a forked child


def new_intent_id() -> str:
    """A fresh intent id: a UUIDv7 (RFC 9562), Unix ms time first, then 74 random bits.

    Any canonical UUID is valid on the wire. Time-ordered ones are recommended: the
    ledger keeps a unique index on intent ids, and ids that grow with time are inserted
    at its end instead of one random page per intent, which measured ~30 % less SQLite
    work per commit that no longer grows with the ledger (docs/performance.md).
    Built as text from one random block's hex (a producer makes one per intent): the
    time's 12 hex digits, then version 7, 3 random digits (rand_a, 12 bits), the variant
    digit (0b10 and 2 random bits), and 15 random digits (rand_b's other 60 bits).
    """
    ms = "%012x" % (time.time_ns() // 1_000_000)
    r = _RANDOM.take().hex()
    return f"{ms[:8]}-{ms[8:]}-7{r[:3]}-{_UUID7_VARIANT[r[3]]}{r[4:7]}-{r[7:UUID7_RAND_HEX]}"


def new_nonce() -> str:
    """32 hex characters from the OS CSPRNG: unique per key with overwhelming probability.
    (What ``secrets.token_hex(16)`` gives, drawn a block at a time: producer/entropy.py.)"""
    return _RANDOM.take().hex()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _common(user_id: int, intent_id: str | None) -> dict[str, Any]:
    return {
        "id": intent_id or new_intent_id(),
        "user_id": user_id,
        "nonce": new_nonce(),
        "issued_at": now_ms(),
    }


def new_deposit(user_id: int, amount: int, intent_id: str | None = None) -> DepositIntent:
    return DepositIntent(kind="deposit", amount=amount, **_common(user_id, intent_id))


def new_withdrawal(user_id: int, amount: int, intent_id: str | None = None) -> WithdrawalIntent:
    return WithdrawalIntent(kind="withdrawal", amount=amount, **_common(user_id, intent_id))


def new_bet(
    user_id: int, amount: int, market: str, selection: str, odds: str, bet_id: str | None = None
) -> BetIntent:
    return BetIntent(
        kind="bet",
        amount=amount,
        market=market,
        selection=selection,
        odds=odds,
        **_common(user_id, bet_id),
    )


def new_settle(user_id: int, bet_id: str, outcome: str,
               intent_id: str | None = None) -> SettleIntent:
    return SettleIntent(kind="settle", bet_id=bet_id, outcome=outcome,
                        **_common(user_id, intent_id))


def _market_common(intent_id: str | None) -> dict[str, Any]:
    return {"id": intent_id or new_intent_id(), "nonce": new_nonce(), "issued_at": now_ms()}


def new_suspend_market(market: str, intent_id: str | None = None) -> SuspendMarketIntent:
    return SuspendMarketIntent(kind="suspend_market", market=market,
                               **_market_common(intent_id))


def new_resume_market(market: str, intent_id: str | None = None) -> ResumeMarketIntent:
    return ResumeMarketIntent(kind="resume_market", market=market, **_market_common(intent_id))


def new_settle_market(market: str, results: dict[str, str], others: str = "lost",
                      intent_id: str | None = None) -> SettleMarketIntent:
    """``results``: selection -> won/lost/void; every other selection gets ``others``.
    ContractError if its body would exceed BODY_BYTES_MAX (64 long selection names can):
    the writer would dead-letter it ``too_large``."""
    intent = SettleMarketIntent(kind="settle_market", market=market, results=results,
                                others=others, **_market_common(intent_id))
    size = len(intent_body(intent))
    if size > BODY_BYTES_MAX:
        raise ContractError(f"settle_market body is {size} bytes, over {BODY_BYTES_MAX}: "
                            "name fewer selections (the others get `others`)", "too_large")
    return intent


def new_withdrawal_hold(user_id: int, amount: int, timeout_s: int | None = None,
                        intent_id: str | None = None) -> WithdrawalHoldIntent:
    """A cash-out reserved; its id is the ``hold_id`` to post or void it with."""
    return WithdrawalHoldIntent(kind="withdrawal_hold", amount=amount, timeout_s=timeout_s,
                                **_common(user_id, intent_id))


def new_withdrawal_post(user_id: int, hold_id: str,
                        intent_id: str | None = None) -> WithdrawalPostIntent:
    return WithdrawalPostIntent(kind="withdrawal_post", hold_id=hold_id,
                                **_common(user_id, intent_id))


def new_withdrawal_void(user_id: int, hold_id: str,
                        intent_id: str | None = None) -> WithdrawalVoidIntent:
    return WithdrawalVoidIntent(kind="withdrawal_void", hold_id=hold_id,
                                **_common(user_id, intent_id))
