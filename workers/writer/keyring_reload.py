"""Keyring reload without restart: SIGHUP asks, the writer's loop re-reads the file.

The signal handler only raises a flag (no locks, no I/O inside a handler); the writer
calls :meth:`KeyringReloader.current` between batches, so one batch is always admitted
with one keyring. A bad file on reload is refused with a clear log line and the keyring
in force stays in force: a typo must not stop the money from flowing, nor crash the
writer. Logs name the key ids and retirement times, never a secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from producer.errors import KeyringError
from producer.signing import Keyring


def describe(keyring: Keyring) -> dict[str, Any]:
    """What an operator needs to see after a (re)load: kids and retirement times only."""
    return {"kids": keyring.kids(),
            "retiring": {kid: keyring.get(kid).retire_at for kid in keyring.kids()
                         if keyring.get(kid).retire_at is not None}}


class KeyringReloader:
    def __init__(self, path: Path, log: Any) -> None:
        """Loads the keyring now: a bad file at start-up is a KeyringError (exit code 2)."""
        self._path = Path(path)
        self._log = log
        self._pending = False
        self._keyring = Keyring.load(self._path)
        self.reloads = 0

    def request(self, *_: object) -> None:
        """Signal handler (SIGHUP): only sets a flag, read at the next batch boundary."""
        self._pending = True

    def current(self) -> Keyring:
        """The keyring to use now, re-read first when a reload was requested."""
        if self._pending:
            self._pending = False
            self._reload()
        return self._keyring

    def _reload(self) -> None:
        try:
            fresh = Keyring.load(self._path)
        except KeyringError as exc:
            self._log.error("keyring.reload_refused", path=str(self._path), error=str(exc),
                            **describe(self._keyring))
            return
        self._keyring = fresh
        self.reloads += 1
        self._log.info("keyring.reloaded", path=str(self._path), **describe(fresh))
