"""A fast path for valid intent bodies, proven equal to the pydantic models.

The writer parses every body. The pydantic path (JSON decode, then generic validation,
then a model) cost ~12 us per bet on this machine; one msgspec decode into a typed,
constrained struct costs ~1 us. The structs below state the rules of wire contract v1
as msgspec constraints plus one regex over the text fields, *narrower* where an exact
equivalent would be slow or subtle (text is printable ASCII without ``"`` or ``\\``,
nonces likewise): anything they do not accept goes through
:func:`producer.contract.parse_intent`, which decides, so rejections (rare) keep
pydantic's exact messages and unusual-but-valid bodies are still accepted.

msgspec keeps the *last* value of a repeated key, where the contract refuses the body.
Because the fast structs admit no ``"`` inside any string, every key and every string
value of an accepted body contributes exactly two ``"`` bytes: a body holding any more
than its kind's fields (a repeated key, however spelled) has more quotes and is sent
to the slow path, which refuses it.

``tests/unit/test_fastparse.py`` proves both paths accept and reject exactly the same
inputs with the same values (hypothesis).
"""

from __future__ import annotations

import re
from functools import lru_cache
from operator import attrgetter
from typing import Annotated, ClassVar, Final, Literal, Union

import msgspec
import msgspec.inspect

from producer.contract import (
    AMOUNT_MAX,
    BODY_BYTES_MAX,
    ISSUED_AT_MAX,
    NONCE_LEN_MAX,
    NONCE_LEN_MIN,
    ODDS_MAX_X100,
    ODDS_MIN_X100,
    TEXT_LEN_MAX,
    USER_ID_MAX,
    Intent,
    parse_intent,
)

# Printable ASCII without '"' and '\\' (so a value never adds a quote byte to the body).
_PLAIN: Final = r"\x20\x21\x23-\x5b\x5d-\x7e"
_PLAIN_NO_SPACE: Final = r"\x21\x23-\x5b\x5d-\x7e"
_UUID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NONCE: Final = rf"[{_PLAIN}]{{{NONCE_LEN_MIN},{NONCE_LEN_MAX}}}"
_TEXT: Final = (  # no edge spaces, 1..TEXT_LEN_MAX characters
    rf"[{_PLAIN_NO_SPACE}](?:[{_PLAIN}]{{0,{TEXT_LEN_MAX - 2}}}[{_PLAIN_NO_SPACE}])?")
_ODDS: Final = r"(?:0|[1-9][0-9]{0,3})(?:\.[0-9]{1,2})?"
ODDS_CACHE_MAX: Final = 4096  # distinct odds strings whose range check is remembered
_SEPARATOR: Final = "\n"  # in none of the classes above, so one field cannot spill over

UserId = Annotated[int, msgspec.Meta(gt=0, le=USER_ID_MAX)]
Amount = Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MAX)]
IssuedAt = Annotated[int, msgspec.Meta(ge=0, le=ISSUED_AT_MAX)]


class _Fast(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    id: str
    user_id: UserId
    nonce: str
    issued_at: IssuedAt


class FastDeposit(_Fast, tag="deposit"):
    kind: ClassVar[str] = "deposit"
    amount: Amount


class FastWithdrawal(_Fast, tag="withdrawal"):
    kind: ClassVar[str] = "withdrawal"
    amount: Amount


class FastBet(_Fast, tag="bet"):
    kind: ClassVar[str] = "bet"
    amount: Amount
    market: str
    selection: str
    odds: str


class FastSettle(_Fast, tag="settle"):
    kind: ClassVar[str] = "settle"
    bet_id: str
    outcome: Literal["won", "lost", "void"]


FastIntent = Union[FastDeposit, FastWithdrawal, FastBet, FastSettle]
_DECODER: Final = msgspec.json.Decoder(FastIntent)


def _quotes(cls: type[_Fast]) -> int:
    """Quote bytes in a body this struct accepts: two per key ("kind" included) and two
    per string value ("kind"'s too); no string it accepts may hold a quote itself."""
    fields = msgspec.inspect.type_info(cls).fields
    strings = sum(1 for f in fields
                  if isinstance(f.type, (msgspec.inspect.StrType, msgspec.inspect.LiteralType)))
    return 2 * (len(fields) + 1) + 2 * (strings + 1)


_QUOTES: Final = {cls: _quotes(cls) for cls in (FastDeposit, FastWithdrawal, FastBet, FastSettle)}


def _text_rule(*fields: tuple[str, str]) -> tuple[attrgetter, re.Pattern[str]]:
    """One regex over a struct's text fields joined by the separator: msgspec's ``pattern``
    constraints called ``re`` once per field (~1.3 us each, 6.5 us per bet here); one
    combined match costs about one of them."""
    names, patterns = zip(*fields)
    return attrgetter(*names), re.compile(_SEPARATOR.join(patterns))


_MONEY_TEXT: Final = _text_rule(("id", _UUID), ("nonce", _NONCE))
_TEXT_RULES: Final = {
    FastDeposit: _MONEY_TEXT,
    FastWithdrawal: _MONEY_TEXT,
    FastBet: _text_rule(("id", _UUID), ("nonce", _NONCE), ("market", _TEXT),
                        ("selection", _TEXT), ("odds", _ODDS)),
    FastSettle: _text_rule(("id", _UUID), ("nonce", _NONCE), ("bet_id", _UUID)),
}


def parse_intent_fast(body: bytes) -> Intent | FastIntent:
    """The same intent as ``parse_intent`` (same fields and values, same errors), as a
    frozen msgspec struct when the fast path accepts it, else as the pydantic model."""
    if len(body) <= BODY_BYTES_MAX:
        try:
            intent = _DECODER.decode(body)
        except (msgspec.MsgspecError, ValueError, RecursionError):  # ValueError: bad UTF-8
            intent = None  # not for the fast path: the slow path decides
        if (intent is not None and body.count(b'"') == _QUOTES[type(intent)]
                and _text_ok(intent)
                and (type(intent) is not FastBet or _odds_in_range(intent.odds))):
            return intent
    return parse_intent(body)  # decides: rejections keep pydantic's exact messages


def _text_ok(intent: FastIntent) -> bool:
    fields, pattern = _TEXT_RULES[type(intent)]
    return pattern.fullmatch(_SEPARATOR.join(fields(intent))) is not None


@lru_cache(maxsize=ODDS_CACHE_MAX)  # a market offers a handful of odds: ~0.1 us, not ~1
def _odds_in_range(odds: str) -> bool:
    whole, _, cents = odds.partition(".")
    return ODDS_MIN_X100 <= int(whole) * 100 + int(cents.ljust(2, "0")) <= ODDS_MAX_X100


def intent_fields(intent: Intent | FastIntent) -> dict[str, object]:
    """Every field of an intent by name, whichever path parsed it (for tests and logs)."""
    if isinstance(intent, msgspec.Struct):
        return {"kind": intent.kind, **msgspec.structs.asdict(intent)}
    return intent.model_dump()
