"""The batch hash chain: SHA-256 over each batch's ledger rows, linked to the previous batch.

Shared by the writer (which computes it before COMMIT) and the audit (which recomputes it
from the rows on disk), so both use exactly one serialisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

GENESIS_HASH: Final = "0" * 64

# (entry_id, txn_id, user_id, amount, ref_type, ref_id, created_at)
LedgerRow = tuple[int, str, int, int, str, str, int]


def batch_hash(prev_hash: str, rows: Iterable[LedgerRow]) -> str:
    """Hex SHA-256 of the previous hash followed by one tab-separated line per row."""
    lines = "".join(f"{e}\t{t}\t{u}\t{a}\t{rt}\t{ri}\t{c}\n" for e, t, u, a, rt, ri, c in rows)
    return hashlib.sha256(prev_hash.encode() + lines.encode()).hexdigest()
