"""What a torture scenario checks at the end: every intent in the stream has exactly one
effect, as the independent model says, and every committed outcome was confirmed.

``lost`` and ``doubled`` are measured (counted), not just asserted, so the report row
shows the real numbers even when a scenario fails.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from producer import constants as c
from tests.conftest import KEYRING, Procs, wait_for
from tests.e2e.model import Model, replay
from tests.support import query
from tests.torture.report import Row

CONFLICT = "id_conflict"


@dataclass
class Tally:
    """The ledger measured against the model."""

    model: Model
    lost: set[str] = field(default_factory=set)  # in the stream, no outcome
    doubled: set[str] = field(default_factory=set)  # more than one effect or outcome
    wrong: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (stored, model)
    conflict_rows: Counter[str] = field(default_factory=Counter)


def model_of(client: redis.Redis) -> Model:
    return replay(client, {kid: key["secret"].encode() for kid, key in KEYRING.items()})


def tally(db: Path | str, model: Model) -> Tally:
    """Outcome rows and ledger transactions per intent id, against the model."""
    out = Tally(model)
    firsts: dict[str, list[str]] = defaultdict(list)
    for intent_id, status, reason in query(db, "SELECT id, status, reason FROM outcomes"):
        if reason == CONFLICT:
            out.conflict_rows[intent_id] += 1
        else:
            firsts[intent_id].append(reason or status)
    out.lost = set(model.outcomes) - set(firsts)
    out.doubled = {i for i, rows in firsts.items() if len(rows) > 1}
    out.doubled |= {i for i, n in out.conflict_rows.items() if n > model.conflicts[i]}
    txn_batches = "SELECT txn_id FROM transaction_ledger GROUP BY txn_id HAVING " \
                  "COUNT(DISTINCT batch_no) > 1"
    out.doubled |= {i for (i,) in query(db, txn_batches)}
    settled_twice = "SELECT ref_id FROM transaction_ledger WHERE ref_type = 'settle' " \
                    "GROUP BY ref_id HAVING COUNT(DISTINCT txn_id) > 1"
    out.doubled |= {i for (i,) in query(db, settled_twice)}
    out.wrong = {i: (rows[0], model.outcomes.get(i, "not in stream"))
                 for i, rows in firsts.items() if rows[0] != model.outcomes.get(i)}
    return out


def players(db: Path | str) -> dict[int, int]:
    return dict(query(db, "SELECT id, balance FROM users WHERE id > 0"))


def bet_states(db: Path | str) -> Counter[str]:
    return Counter(dict(query(db, "SELECT status, COUNT(*) FROM bets GROUP BY status")))


def confirmed(client: redis.Redis) -> dict[int, tuple[str, str]]:
    """seq -> (id, status) of every message on the confirmations stream."""
    out: dict[int, tuple[str, str]] = {}
    for _, fields in client.xrange(c.STREAM_CONFIRMATIONS):
        message = json.loads(fields[b"outcome"])
        out[int(message["seq"])] = (message["id"], message["reason"] or message["status"])
    return out


def committed(db: Path | str) -> dict[int, tuple[str, str]]:
    return {seq: (i, reason or status) for seq, i, status, reason in
            query(db, "SELECT seq, id, status, reason FROM outcomes")}


def verify(db: Path | str, client: redis.Redis, procs: Procs, row: Row,
           confirm_timeout_s: float = 120) -> None:
    """Fill the report row with what was measured, then assert exactly-once end to end."""
    model = model_of(client)
    found = tally(db, model)
    row.intents, row.lost, row.doubled = model.entries, len(found.lost), len(found.doubled)
    audit = procs.run("audit")
    row.audit = "pass" if audit.returncode == 0 else "FAIL"
    verdicts = Counter(model.outcomes.values())
    row.extra["model"] = {**verdicts, "settled": sum(
        n for state, n in model.settled.items() if state != "open"),
        "resent": model.resent, "id_conflict": sum(model.conflicts.values())}
    assert not found.lost, f"{len(found.lost)} intents have no outcome"
    assert not found.doubled, f"{len(found.doubled)} intents had more than one effect"
    assert not found.wrong, f"outcomes differ from the model: {list(found.wrong.items())[:5]}"
    assert dict(found.conflict_rows) == dict(model.conflicts), "one row per id_conflict"
    assert players(db) == model.balances, "balances equal the independent model"
    assert bet_states(db) == model.settled, "every bet is open or settled as the model says"
    rows = committed(db)
    try:
        wait_for(lambda: set(confirmed(client)) >= set(rows), confirm_timeout_s,
                 "every committed outcome to be confirmed", interval_s=0.5)
    finally:
        published = confirmed(client)
        row.extra["unconfirmed"] = len(set(rows) - set(published))
    assert {seq: published[seq] for seq in rows} == rows, "each confirmation says what is stored"
    assert audit.returncode == 0, audit.stdout + audit.stderr
