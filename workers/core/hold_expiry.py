"""Withdrawal holds past their ``timeout_s``, voided by the writer itself. Pure.

Each batch the writer commits (or, with nothing to read, a batch of its own once a hold is
due) takes the holds due by then, oldest first, up to a bound, as its own
``withdrawal_void`` candidates with deterministic ids and entry ids (``expire:<hold id>``:
never a UUID, so no intent from the stream can take one first). They are decided like
a player's void (pending -> player), recorded ``expired``, and confirmed to the player like
any outcome. A hold closes only while open, in the batch's one transaction: a writer
restart neither loses an expiry (the hold is still open and due) nor doubles it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from producer.contract import WithdrawalVoidIntent
from workers.core.decision import WRITER_ENTRY_PREFIX, Candidate, HoldState
from workers.core.market_settlement import WRITER_NONCE

EXPIRY_PREFIX: Final = "expire:"  # of an expiry's entry id (after the writer's) and id name


def expiry_candidates(holds: Sequence[HoldState], now_ms: int) -> list[Candidate]:
    out = []
    for hold in holds:
        name = f"{EXPIRY_PREFIX}{hold.id}"
        intent = WithdrawalVoidIntent.model_construct(  # built from the ledger: valid
            kind="withdrawal_void", id=name, user_id=hold.user_id,
            nonce=WRITER_NONCE, issued_at=now_ms, hold_id=hold.id)
        out.append(Candidate(f"{WRITER_ENTRY_PREFIX}{name}", now_ms, intent.id,
                             "withdrawal_void", hold.user_id,
                             hashlib.sha256(name.encode()).digest(), intent))
    return out
