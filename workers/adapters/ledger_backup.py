"""``betstream backup DEST``: an online, consistent copy of the ledger while the writer runs.

Uses SQLite's backup API on a read connection: the copy is one snapshot (WAL readers never
block the writer, and the writer never blocks us), copied in bounded steps with progress.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from producer.errors import ConfigError
from workers.adapters.ledger_store import connect, create_private

PAGES_PER_STEP: Final = 4096  # 16 MiB with 4 KiB pages between progress reports


def backup(source: Path, dest: Path, busy_timeout_ms: int,
           progress: Callable[[int, int], None] | None = None) -> int:
    """Copy ``source`` to ``dest`` (nothing may be there, not even a symlink); returns the
    pages copied. The copy is created with mode 0600 and never through a symlink."""
    dest = Path(dest)
    _refuse_existing(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = connect(source, busy_timeout_ms, readonly=True)
    try:
        _create(dest)
        out = sqlite3.connect(dest)
    except BaseException:
        src.close()
        raise
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


def _create(dest: Path) -> None:
    """``dest`` created empty, mode 0600, with O_EXCL: a file or symlink that appeared
    since the first check is refused, never followed."""
    try:
        created = create_private(dest)
    except OSError as exc:
        raise ConfigError(f"cannot create {dest}: {exc.strerror}") from None
    if not created:
        _refuse_existing(dest, present=True)


def _refuse_existing(dest: Path, present: bool = False) -> None:
    """ConfigError naming ``dest`` when anything is there (``lexists``: a symlink, even a
    dangling one, counts; ``exists`` would follow it)."""
    if dest.is_symlink():
        raise ConfigError(f"{dest} is a symlink; choose a new file (a backup never overwrites "
                          "and never follows a link)")
    if present or os.path.lexists(dest):
        raise ConfigError(f"{dest} exists; choose a new file (a backup never overwrites)")
