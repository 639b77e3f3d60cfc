"""One error hierarchy for the whole project (in the spirit of dramatiq's ``errors.py``).

Expected faults (bad input, unreachable Redis, a locked database, a lost lease) are
subclasses of :class:`BetstreamError` and are handled or reported with a clear message.
Anything else is a programmer error and is allowed to crash loudly.
"""


class BetstreamError(Exception):
    """Base class of every expected betstream fault."""


class ConfigError(BetstreamError):
    """Settings, keyring or environment are unusable; the process cannot start."""


class KeyringError(ConfigError):
    """The keyring file is missing, unreadable or malformed."""


class ContractError(BetstreamError):
    """An intent breaks wire contract v1; ``reason`` is the machine-readable cause."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ForbiddenKind(ContractError):
    """The signing key may not sign this kind of intent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="forbidden_kind")


class AuthError(BetstreamError):
    """A stream entry failed authentication (unknown key id, bad signature, bad framing)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyRetired(AuthError):
    """The key reached its keyring ``retire_at``: producers must not sign with it any more,
    and the writer dead-letters entries signed with it that reached the stream later."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="retired_key")


class StoreError(BetstreamError):
    """The ledger store failed (locked, read-only, full, I/O); the batch is retried."""


class FencedOut(StoreError):
    """Another writer holds a newer fencing epoch; this writer must stop committing."""


class LeaseLost(BetstreamError):
    """This writer no longer holds the Redis lease."""


class InvariantViolation(BetstreamError):
    """A ledger invariant does not hold; never swallowed, always investigated."""


class BreakerOpen(BetstreamError):
    """The circuit breaker sheds load: nothing was sent; try again after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JournalError(ConfigError):
    """A producer journal cannot be written or read (missing, unreadable, corrupt line)."""
