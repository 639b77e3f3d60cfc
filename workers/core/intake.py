"""Authenticate and validate raw stream entries. Pure: no I/O, the keyring is passed in.

An entry either becomes a :class:`Candidate` (authenticated; it will get exactly one
outcome, possibly ``invalid`` or ``forbidden_kind``) or a :class:`DeadLetter` (not
authenticated or not identifiable, so nobody can be told: it is parked with its reason).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from producer import constants as c
from producer.contract import (
    BODY_BYTES_MAX,
    KINDS,
    MARKET_KINDS,
    MARKET_USER_ID,
    USER_ID_MAX,
    Intent,
    is_canonical_uuid,
)
from producer.errors import AuthError, ContractError
from producer.fastparse import FastIntent, parse_intent_fast
from producer.invariants import require
from producer.signing import Keyring, verify
from workers.core.decision import Candidate

RAW_FIELD_BYTES_MAX: Final = 512  # how much of a rejected field the dead-letter entry keeps
_ENTRY_KEYS: Final = frozenset(name.encode() for name in c.ENTRY_FIELDS)
_VERSION, _BODY, _KID, _SIG = (f.encode() for f in (c.FIELD_VERSION, c.FIELD_BODY, c.FIELD_KID,
                                                    c.FIELD_SIG))
_WIRE_VERSION: Final = c.WIRE_VERSION.encode()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    reason: str  # malformed | unsupported_version | unknown_kid | bad_signature | too_large
    #              | retired_key
    detail: str
    kid: str | None = None


def ingress_ms(entry_id: str) -> int:
    """A stream entry id is ``<ms>-<seq>``: the ms part is when Redis accepted it."""
    return int(entry_id.split("-", 1)[0])


# The fields of an entry the admission child admitted (workers/writer/admission.py): admitting
# it again would be a programmer error, never a silent "malformed" dead letter.
ADMITTED_ELSEWHERE: Final[dict[bytes, bytes]] = {}


def admit_entry(entry_id: str, fields: dict[bytes, bytes] | None,
                keyring: Keyring) -> Candidate | DeadLetter:
    """One entry as read from the stream (fields None: deleted before it was read)."""
    require(fields is not ADMITTED_ELSEWHERE, "an entry the admission child admitted was "
            "about to be admitted again without its fields")
    if fields is None:
        return DeadLetter(entry_id, "deleted", "entry was deleted before processing")
    return admit(entry_id, fields, keyring)


def admit(entry_id: str, fields: dict[bytes, bytes], keyring: Keyring) -> Candidate | DeadLetter:
    """Classify one raw entry; never raises for bad input."""
    at_ms = ingress_ms(entry_id)
    try:
        kid, body, sig = _frame(fields)
        key = verify(keyring, kid, body, sig, at_ms=at_ms)
    except AuthError as exc:
        return DeadLetter(entry_id, exc.reason, str(exc), _kid_of(fields))
    sha = hashlib.sha256(body).digest()
    try:
        intent = parse_intent_fast(body)
    except ContractError as exc:
        return _invalid(entry_id, body, sha, key.kinds, kid, exc)
    candidate = Candidate.of(entry_id, at_ms, intent, sha, kid)
    if intent.kind not in key.kinds:
        return candidate.rejected_early(
            "forbidden_kind", f"key {kid!r} may not sign {intent.kind!r} intents")
    return candidate


def _frame(fields: dict[bytes, bytes]) -> tuple[str, bytes, str]:
    if fields.keys() != _ENTRY_KEYS:  # (the exact byte keys: the usual case, checked fast)
        names = {k.decode("utf-8", "replace") for k in fields}
        missing = sorted(c.ENTRY_FIELDS - names)
        extra = sorted(names - c.ENTRY_FIELDS)[:5]
        raise AuthError(f"entry fields wrong: missing {missing}, unexpected {extra}", "malformed")
    version = fields[_VERSION]
    if version != _WIRE_VERSION:
        raise AuthError(f"wire version {version[:16]!r} is not supported", "unsupported_version")
    body = fields[_BODY]
    if len(body) > BODY_BYTES_MAX:
        raise AuthError(f"body is {len(body)} bytes, over {BODY_BYTES_MAX}", "too_large")
    try:
        kid = fields[_KID].decode("utf-8")
        sig = fields[_SIG].decode("ascii")
    except UnicodeDecodeError:
        raise AuthError("kid or sig is not valid text", "malformed") from None
    return kid, body, sig


def _kid_of(fields: dict[bytes, bytes]) -> str | None:
    raw = fields.get(c.FIELD_KID.encode())
    return raw[:64].decode("utf-8", "replace") if raw is not None else None


def _invalid(
    entry_id: str, body: bytes, sha: bytes, kinds: frozenset[str], kid: str, exc: ContractError
) -> Candidate | DeadLetter:
    """Signed but invalid: if we can tell whose intent it is, they get an ``invalid`` outcome."""
    detail = str(exc)[:RAW_FIELD_BYTES_MAX]
    identity = _identity(body)
    if identity is None:
        return DeadLetter(entry_id, exc.reason if exc.reason != "invalid" else "malformed",
                          detail, kid)
    intent_id, kind, user_id = identity
    reason = "invalid"
    if kind not in kinds:  # authorisation is decided before validation
        reason, detail = "forbidden_kind", f"key {kid!r} may not sign {kind!r} intents"
    return Candidate(entry_id, ingress_ms(entry_id), intent_id, kind, user_id, sha, None,
                     pre_reason=reason, detail=detail, kid=kid)


def _identity(body: bytes) -> tuple[str, str, int] | None:
    """id, kind and user_id of a signed body that failed validation, if they are usable."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    intent_id, kind, user_id = raw.get("id"), raw.get("kind"), raw.get("user_id")
    if kind in MARKET_KINDS:  # names no player: its outcome is the market's (user 0)
        user_id = MARKET_USER_ID
    elif kind not in KINDS or type(user_id) is not int or not 0 < user_id <= USER_ID_MAX:
        return None
    if not isinstance(intent_id, str) or not is_canonical_uuid(intent_id):
        return None
    return intent_id, kind, user_id


def freshness_reason(intent: Intent | FastIntent, ingress: int, now: int, age_max_ms: int,
                     skew_max_ms: int) -> str | None:
    """``stale`` when the entry waited too long, or was signed too long before ingress.

    The entry id's time is the ingress time. Bounding both ages below the nonce TTL means
    a nonce is still remembered for as long as its intent can be accepted.
    """
    if now - ingress > age_max_ms:
        return "stale"
    if ingress - intent.issued_at > age_max_ms or intent.issued_at - ingress > skew_max_ms:
        return "stale"
    return None


def admit_entries(entries: Sequence[tuple[str, dict[bytes, bytes] | None]], keyring: Keyring
                  ) -> tuple[list[Candidate], list[DeadLetter]]:
    """A batch's entries authenticated and parsed, in stream order: candidates to decide
    and dead letters. One keyring for the whole batch, even if a reload swaps it."""
    candidates, dead = [], []
    for entry_id, fields in entries:
        result = admit_entry(entry_id, fields, keyring)
        (dead if isinstance(result, DeadLetter) else candidates).append(result)
    return candidates, dead


def undecided(cand: Candidate) -> bool:
    """Still to be checked and decided: no reason found yet, and a valid intent."""
    return cand.pre_reason is None and cand.intent is not None


def undecided_fresh(candidates: Sequence[Candidate], now: int, age_max_ms: int,
                    skew_max_ms: int) -> list[Candidate]:
    """The undecided candidates still fresh at ``now``: those whose nonces are claimed.
    Fresh at a later time means fresh now too (only the wait grows)."""
    return [c for c in candidates if undecided(c)
            and freshness_reason(c.intent, c.ingress_ms, now, age_max_ms,  # type: ignore[arg-type]
                                 skew_max_ms) is None]


def reject_stale(candidates: Sequence[Candidate], now: int, age_max_ms: int,
                 skew_max_ms: int) -> list[Candidate]:
    """The candidates, with those that are stale at ``now`` rejected: where freshness is
    decided, at decision time, so a batch retried after an outage is judged anew."""
    out = []
    for cand in candidates:  # written out: runs for every intent
        if cand.pre_reason is None and cand.intent is not None:
            reason = freshness_reason(cand.intent, cand.ingress_ms, now, age_max_ms,
                                      skew_max_ms)
            if reason is not None:
                cand = cand.rejected_early(reason, "intent too old or issued too far "
                                           "from its ingress time")
        out.append(cand)
    return out


_UNCLAIMED: Final = object()  # no claim was made for the entry


def reject_replays(candidates: Sequence[Candidate], holders: Mapping[str, str | None]
                   ) -> list[Candidate]:
    """The candidates, with replays rejected: ``holders`` gives, by stream entry id, who
    held each undecided candidate's nonce when it claimed it (None: the candidate itself).
    Every undecided candidate must have claimed its nonce: deciding one without a claim
    could accept a replay."""
    out = list(candidates)
    for i, cand in enumerate(candidates):  # written out: runs for every intent
        if cand.pre_reason is not None or cand.intent is None:
            continue
        holder = holders.get(cand.entry_id, _UNCLAIMED)
        if holder is None or holder == cand.id:
            continue
        require(holder is not _UNCLAIMED, f"entry {cand.entry_id} was about to be decided "
                "without a claim on its nonce")
        out[i] = cand.rejected_early("replay", "nonce already used by another intent")
    return out
