"""The confirmer's durable record of how far it published: one seq in a small file beside
the ledger, so a confirmer restarted after Redis lost its data goes on from where it was
instead of from what Redis no longer remembers.

Written with a rename (never half a file); not fsynced: a record lost with the machine
only makes the confirmer publish a few outcomes again, which subscribers drop by seq.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600  # nothing secret in it, but nothing for other users either


def load_progress(path: Path) -> int | None:
    """The seq recorded, or None if there is no (readable) record."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def save_progress(path: Path, seq: int) -> None:
    """Record ``seq``; raises OSError if the directory cannot be written."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(f"{seq}\n")
    os.replace(temporary, path)
