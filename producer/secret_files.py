"""Files holding secrets (a keyring, the gateway secret) are read only if nobody else can
change them.

A file others may write is refused: whoever can write it can add a key and sign money
moves, or swap the secret that tokens are checked with. A file others may read is used,
with a warning: the secrets may have leaked, but refusing would stop the money flowing.
The warning names the file and its mode, never its content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

import structlog

from producer.errors import ConfigError

OTHERS_WRITE_BITS: Final = stat.S_IWGRP | stat.S_IWOTH
WORLD_READ_BITS: Final = stat.S_IROTH


def read_secret_file(path: Path, label: str, error: type[ConfigError] = ConfigError) -> bytes:
    """The bytes of ``path`` (``label`` names it in messages: "keyring"), checked on the file
    actually opened. ``error`` (a ConfigError) when group or others may write it; a
    ``<label>.world_readable`` warning when others may read it. OSError as ``open`` raises
    it."""
    with open(path, "rb") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & OTHERS_WRITE_BITS:
            raise error(f"{label} {path} is group- or world-writable (mode {mode:04o}); "
                        "chmod 600 it")
        if mode & WORLD_READ_BITS:
            structlog.get_logger("betstream.secrets").warning(
                f"{label.replace(' ', '_')}.world_readable", path=str(path),
                mode=f"{mode:04o}", hint="chmod 600 it")
        return file.read()
