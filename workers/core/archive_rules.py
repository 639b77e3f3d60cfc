"""Pure rules of archival: how far back it may reach, which file a batch goes to, and the
carried-forward rows that keep the live ledger whole. No I/O, so it is tested exhaustively.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from producer.invariants import require

CARRY_REF: str = "carry"
SYSTEM_ACCOUNT_MIN: int = -2  # escrow; carried-forward entry ids are derived from account ids


@dataclass(frozen=True, slots=True)
class Cutoff:
    ms: int
    why: str  # what bounded it: "requested", "freshness" or "pending"


def effective_cutoff(before_ms: int, now_ms: int, age_max_ms: int, skew_max_ms: int,
                     unacked_ms: int | None, unpublished_ms: int | None = None) -> Cutoff:
    """The latest commit time archival may take.

    An intent committed at T carried issued_at <= T + skew, so a copy of it re-sent later
    is accepted into the stream only with ingress I <= T + skew + age_max; the writer would
    then find no stored outcome (archived) and, its nonce holding the same id, apply it
    again. So every ingress still to be processed must be past T + skew + age_max:
    - freshness: entries yet to arrive have I >= now;
    - backlog: entries already in the stream but not acknowledged (unread, or pending after
      a crash between COMMIT and XACK) have I >= the unacknowledged floor.
    And the confirmer publishes from the live ledger: the batch of the first outcome it has
    not published (committed at ``unpublished_ms``) stays.
    """
    options = [Cutoff(before_ms, "requested"),
               Cutoff(now_ms - age_max_ms - skew_max_ms, "freshness")]
    if unacked_ms is not None:
        options.append(Cutoff(unacked_ms - age_max_ms - skew_max_ms, "backlog"))
    if unpublished_ms is not None:
        options.append(Cutoff(unpublished_ms, "confirmations not yet published"))
    return min(options, key=lambda c: c.ms)


def period_of(ms: int) -> str:
    """Archive files are per calendar month (UTC) of the batch's commit."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m")


def carry_entry_id(account: int) -> int:
    """Each account's one carried-forward row has a fixed negative entry id: it never meets
    a real entry (those count up from 1) and sorts before them in a statement."""
    require(account >= SYSTEM_ACCOUNT_MIN, f"no carried-forward id for account {account}")
    return -(account - SYSTEM_ACCOUNT_MIN + 1)


def carried(old: Mapping[int, int], rows: Iterable[tuple[int, int]]) -> dict[int, int]:
    """New carried-forward amounts of the accounts the archived ``(account, amount)`` rows
    touch: old carry plus what leaves the live file. Zero means the row disappears."""
    out: dict[int, int] = {}
    for account, amount in rows:
        out[account] = out.get(account, old.get(account, 0)) + amount
    return out
