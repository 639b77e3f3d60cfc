"""``betstream reconcile``: the I/O around :func:`workers.core.reconciliation.reconcile`.

Reads the producers' journals, the ledger's outcomes and effects per intent id, and the
dead-letter stream; refuses to judge while the writer still has pending or unread entries
(an acknowledged intent still in the stream is late, not lost), or waits for the drain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import redis

from producer import constants as c
from producer.errors import ConfigError
from producer.journal import Ack, read_journal
from workers.adapters.intent_stream import backlog
from workers.adapters.ledger_queries import (
    first_outcomes_per_id,
    outcome_ids_through,
    posting_batches_per_txn,
)
from workers.adapters.ledger_store import connect
from workers.core.reconciliation import Reconciliation, Recorded, reconcile

DRAIN_POLL_S: Final = 0.5
IDS_SHOWN_MAX: Final = 20  # lost / doubled ids printed in the text report (JSON has all)
EXIT_OK, EXIT_FAILED = 0, 1


def load_recorded(path: Path, busy_timeout_ms: int,
                  archive_dir: Path | None = None) -> dict[str, Recorded]:
    """Outcome rows and posting batches per intent id, from one consistent snapshot of the
    live ledger and, after archival, the archive files (up to the live anchor)."""
    from workers.adapters.ledger_archive import read_anchor
    from workers.adapters.ledger_archive_audit import archive_files

    conn = None
    try:
        conn = connect(path, busy_timeout_ms, readonly=True)
        conn.execute("BEGIN")
        files = archive_files(conn) if archive_dir is not None else []
        anchor = read_anchor(conn) if files else None
        through = anchor.through_batch if anchor else 0
        outcomes = first_outcomes_per_id(conn)
        effects = posting_batches_per_txn(conn, after_batch=through)
        held = outcome_ids_through(conn, anchor.seq_max if anchor else 0)
        for file, _, _ in files:
            _add_archived(Path(archive_dir) / file, anchor, held, outcomes, effects)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a readable betstream ledger: {exc}") from None
    finally:
        if conn is not None:
            conn.close()
    ids = set(outcomes) | set(effects)
    return {i: Recorded(outcomes.get(i, 0), effects.get(i, 0)) for i in ids}


def _add_archived(path: Path, anchor, held: set[str], outcomes: Counter,
                  effects: Counter) -> None:
    """Rows an archive file holds up to the anchor (a killed run may have copied more, still
    live); outcomes still live (placing open bets) are counted once, from the live file."""
    if not path.exists():
        raise ConfigError(f"archive file {path} is missing (listed in the ledger)")
    conn = connect(path, 0, readonly=True)
    try:
        for i, n in first_outcomes_per_id(conn, seq_max=anchor.seq_max).items():
            if i not in held:
                outcomes[i] += n
        effects.update(posting_batches_per_txn(conn, through_batch=anchor.through_batch))
    finally:
        conn.close()


def dead_letter_entries(client: redis.Redis) -> set[str]:
    return {f[b"entry_id"].decode() for _, f in client.xrange(c.STREAM_DEADLETTER)
            if b"entry_id" in f}


def wait_drained(client: redis.Redis, wait_s: float) -> tuple[int, int] | None:
    """(pending, unread) once both are 0 or ``wait_s`` passed; None if no writer group yet."""
    deadline = time.monotonic() + wait_s
    while True:
        state = backlog(client)
        if state is None or state == (0, 0) or time.monotonic() >= deadline:
            return state
        time.sleep(DRAIN_POLL_S)


def run_reconcile(db: Path, busy_timeout_ms: int, client: redis.Redis | None,
                  args: argparse.Namespace, archive_dir: Path | None = None) -> int:
    acks: list[Ack] = []
    torn = 0
    for path in args.journal:
        records, cut = read_journal(path)
        acks.extend(records)
        torn += cut
    dead: set[str] = set()
    if client is not None:
        state = wait_drained(client, args.wait)
        if state not in (None, (0, 0)):
            pending, unread = state
            print(f"betstream reconcile: not drained yet: the writer has {pending} pending "
                  f"and {unread} unread intents; an acknowledged intent still in the stream "
                  f"is late, not lost. Run again once drained, or use --wait SECONDS.")
            return EXIT_FAILED
        dead = dead_letter_entries(client)
    result = reconcile(acks, load_recorded(db, busy_timeout_ms, archive_dir), dead, torn)
    print(json.dumps(result.as_dict()) if args.json else _text(result, args.journal))
    return EXIT_OK if result.ok else EXIT_FAILED


def _text(r: Reconciliation, journals: Sequence[str]) -> str:
    out = [f"reconciled {r.intents} acknowledged intents ({r.acknowledgements} XADD replies "
           f"in {len(journals)} journal(s)) against the ledger",
           f"  with an outcome: {r.with_outcome}"]
    if r.dead_lettered:
        out.append(f"  dead-lettered (refused at authentication): {len(r.dead_lettered)}")
    if r.torn_lines:
        out.append(f"  torn last journal lines skipped: {r.torn_lines}")
    out.append(f"  doubled (more than one effect): {len(r.doubled)}"
               + _ids(r.doubled))
    if r.lost:
        first, last = r.lost_entry_ms or (0, 0)
        out.append(f"  LOST (acknowledged by Redis, no outcome): {len(r.lost)}, acknowledged "
                   f"between {_when(first)} and {_when(last)} ({last - first} ms)"
                   + _ids(r.lost))
        out.append("acknowledged intents are missing: Redis lost them before the writer "
                   "read them; re-send them (same id and nonce: an intent already applied "
                   "gets its original outcome back as a duplicate, never a second effect)")
    else:
        out.append("  lost: 0")
        out.append("nothing acknowledged is missing" + (
            "" if not r.doubled else "; but some intents have more than one effect"))
    return "\n".join(out)


def _ids(ids: Sequence[str]) -> str:
    if not ids:
        return ""
    more = f" … (+{len(ids) - IDS_SHOWN_MAX})" if len(ids) > IDS_SHOWN_MAX else ""
    return "\n    " + "\n    ".join(ids[:IDS_SHOWN_MAX]) + more


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
