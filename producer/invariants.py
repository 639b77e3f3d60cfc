"""Invariant checks that survive ``python -O`` (a bare ``assert`` would vanish)."""

from producer.errors import InvariantViolation


def require(condition: bool, message: str) -> None:
    """Raise :class:`InvariantViolation` when ``condition`` is false."""
    if not condition:
        raise InvariantViolation(message)
