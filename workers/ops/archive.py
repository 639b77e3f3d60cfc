"""``betstream archive``: the archival as a command, with its cutoff explained and progress."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from workers.adapters.confirmation_publisher import read_progress
from workers.adapters.confirmer_progress import load_progress
from workers.adapters.intent_stream import unacked_floor_ms
from workers.adapters.ledger_archive import ArchiveResult, archive
from workers.adapters.ledger_queries import batches_committed_before, first_committed_after
from workers.adapters.ledger_store import connect
from workers.adapters.redis_connection import redis_client
from workers.core.archive_rules import Cutoff, effective_cutoff
from workers.settings import Settings


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def _batches_before(db: Path, cutoff_ms: int, busy_timeout_ms: int) -> int:
    conn = connect(db, busy_timeout_ms, readonly=True)
    try:
        return batches_committed_before(conn, cutoff_ms)
    finally:
        conn.close()


def _first_unpublished_ms(settings: Settings, client: redis.Redis, db: Path) -> int | None:
    """When the first outcome the confirmer has not published was committed (None: all are
    published, or no confirmer has recorded its progress, here or in Redis)."""
    published = load_progress(settings.confirm_progress_path)
    if published is None:
        published = (read_progress(client) or (None, 0))[0]
    if published is None:
        return None
    conn = connect(db, settings.sqlite_busy_timeout_ms, readonly=True)
    try:
        return first_committed_after(conn, published)
    finally:
        conn.close()


def run_archive_command(settings: Settings, args: argparse.Namespace, before_ms: int) -> int:
    db = Path(args.db or settings.db)
    client = redis_client(settings.redis_url)
    cutoff = effective_cutoff(before_ms, int(time.time() * 1000), settings.intent_age_max_ms,
                              settings.clock_skew_max_ms, unacked_floor_ms(client),
                              _first_unpublished_ms(settings, client, db))
    if not args.json:
        print(_explain(cutoff, before_ms))
    result = _run(settings, db, Path(args.archive_dir or settings.archive_path), cutoff.ms,
                  args.quiet or args.json)
    summary = {"cutoff": _iso(cutoff.ms), "cutoff_by": cutoff.why, "chunks": result.chunks,
               "batches": result.batches, "ledger_rows": result.ledger_rows,
               "files": sorted(result.files)}
    print(json.dumps(summary) if args.json else
          f"archived {result.batches} batches ({result.ledger_rows} ledger rows) into "
          f"{', '.join(sorted(result.files)) or 'no file'}; check with "
          "betstream audit --with-archives")
    return 0


def _explain(cutoff: Cutoff, before_ms: int) -> str:
    if cutoff.why == "requested":
        return f"archiving batches committed before {_iso(cutoff.ms)}"
    why = {"freshness": "intents younger than the freshness window could still be re-sent",
           "backlog": "stream entries are not yet acknowledged (a re-sent copy among them "
                      "must still find its outcome live)"}[cutoff.why]
    return (f"archiving batches committed before {_iso(cutoff.ms)}, not {_iso(before_ms)}: "
            f"{why}")


def _run(settings: Settings, db: Path, archive_dir: Path, cutoff_ms: int,
         quiet: bool) -> ArchiveResult:
    kwargs = {"busy_timeout_ms": settings.sqlite_busy_timeout_ms,
              "rows_max": settings.archive_chunk_rows_max,
              "batches_max": settings.archive_chunk_batches_max,
              "pause_ms": settings.archive_pause_ms}
    if quiet:
        return archive(db, archive_dir, cutoff_ms, **kwargs)
    total = _batches_before(db, cutoff_ms, settings.sqlite_busy_timeout_ms)
    columns = (TextColumn("archiving batches"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("archive", total=total)
        return archive(db, archive_dir, cutoff_ms, **kwargs,
                       progress=lambda r, _c: bar.update(task, completed=r.batches))
