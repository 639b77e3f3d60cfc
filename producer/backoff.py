"""Bounded exponential backoff with full jitter (pure: the random source is passed in)."""

from __future__ import annotations

import random
from typing import Final

EXPONENT_MAX: Final = 30  # 2**30 x min already exceeds any sane maximum


def backoff_ms(attempt: int, min_ms: int, max_ms: int, rng: random.Random | None = None) -> int:
    """Delay before retry number ``attempt`` (1-based): uniform in [min, min(max, min*2^n)]."""
    ceiling = min(max_ms, min_ms * 2 ** min(max(attempt - 1, 0), EXPONENT_MAX))
    return (rng or random).randint(min_ms, max(min_ms, ceiling))
