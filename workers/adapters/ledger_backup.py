"""``betstream backup DEST``: an online, consistent copy of the ledger while the writer runs.

Uses SQLite's backup API on a read connection: the copy is one snapshot (WAL readers never
block the writer, and the writer never blocks us), copied in bounded steps with progress.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from producer.errors import ConfigError
from workers.adapters.ledger_store import connect

PAGES_PER_STEP: Final = 4096  # 16 MiB with 4 KiB pages between progress reports


def backup(source: Path, dest: Path, busy_timeout_ms: int,
           progress: Callable[[int, int], None] | None = None) -> int:
    """Copy ``source`` to ``dest`` (which must not exist); returns the pages copied."""
    dest = Path(dest)
    if dest.exists():
        raise ConfigError(f"{dest} exists; choose a new file (a backup never overwrites)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = connect(source, busy_timeout_ms, readonly=True)
    out = sqlite3.connect(dest)
    try:
        total = src.execute("PRAGMA page_count").fetchone()[0]
        src.backup(out, pages=PAGES_PER_STEP,
                   progress=(lambda _status, remaining, pages: progress(pages - remaining, pages))
                   if progress else None)
        out.execute("PRAGMA journal_mode = WAL")  # ready to be opened by a writer as is
        return total
    except sqlite3.Error as exc:
        out.close()
        dest.unlink(missing_ok=True)
        raise ConfigError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
        out.close()
