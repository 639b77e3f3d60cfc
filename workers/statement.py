"""``betstream statement USER_ID``: "where did my money go?", answered from the ledger.

Every ledger entry of the account with its reference and a running balance; the last
running balance must equal the account's snapshot balance (the statement says so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from producer.errors import ConfigError
from workers.store import connect


@dataclass(frozen=True, slots=True)
class Line:
    entry_id: int
    at_ms: int
    ref_type: str  # deposit | withdrawal | bet | settle
    ref_id: str  # the intent id (for bets and settlements: the bet id)
    txn_id: str
    amount: int
    balance: int  # running balance after this entry


@dataclass(frozen=True, slots=True)
class Statement:
    user_id: int
    opening: int  # balance before the first line shown
    lines: list[Line]
    closing: int  # running balance after the last entry
    snapshot: int | None  # users.balance

    @property
    def consistent(self) -> bool:
        return self.snapshot == self.closing

    def as_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "opening": self.opening, "closing": self.closing,
                "snapshot": self.snapshot, "consistent": self.consistent,
                "lines": [asdict(line) for line in self.lines]}


def statement(db: Path, user_id: int, since_ms: int = 0, busy_timeout_ms: int = 5000) -> Statement:
    conn = connect(db, busy_timeout_ms, readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot for the lines and the balance
        row = conn.execute("SELECT balance FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no account {user_id} in {db}")
        rows = conn.execute(
            "SELECT entry_id, created_at, ref_type, ref_id, txn_id, amount "
            "FROM transaction_ledger WHERE user_id = ? ORDER BY entry_id", (user_id,))
        running, opening, lines = 0, 0, []
        for entry_id, at, ref_type, ref_id, txn_id, amount in rows:
            if at < since_ms:
                opening = running = running + amount
                continue
            running += amount
            lines.append(Line(entry_id, at, ref_type, ref_id, txn_id, amount, running))
        return Statement(user_id, opening, lines, running, row[0])
    finally:
        conn.close()
