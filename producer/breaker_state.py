"""The circuit breaker's state as every process sees it: the record, its limits, what a
producer may do under it, and its encoding in the Redis hash ``betstream:breaker``.

Shared by the producer library (which sheds load while the breaker is open) and the
server (whose writer moves it: ``workers/core/breaker_machine.py``). Pure: no I/O, the clock is a
parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Final

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerLimits:
    failures_max: int = 3  # consecutive failed commits
    commit_max_ms: int = 2_000
    backlog_age_max_ms: int = 30_000  # below the freshness window, so we shed before `stale`
    cooldown_s: float = 5.0
    cooldown_max_s: float = 60.0  # each re-open from HALF_OPEN doubles the cool-down up to this
    stability_s: float = 30.0
    half_open_share: float = 0.1  # share of intents producers may send while HALF_OPEN


@dataclass(frozen=True, slots=True)
class Breaker:
    state: str = CLOSED
    since_ms: int = 0
    reason: str = ""
    failures: int = 0
    forced: bool = False
    opened: int = 0  # how many times it went OPEN (for flapping bounds and metrics)
    reopens: int = 0  # re-opens from HALF_OPEN since the last CLOSED: grows the cool-down

    def to(self, state: str, now_ms: int, reason: str) -> Breaker:
        opened = self.opened + (1 if state == OPEN else 0)
        if state == CLOSED:
            reopens = 0
        elif state == OPEN and self.state == HALF_OPEN:
            reopens = self.reopens + 1
        else:
            reopens = self.reopens
        return replace(self, state=state, since_ms=now_ms, reason=reason, failures=0,
                       opened=opened, reopens=reopens)


def cooldown_s(b: Breaker, lim: BreakerLimits) -> float:
    """Cool-down of the current OPEN period: doubled per re-open, so a flapping store
    yields a few long OPEN periods instead of one per flap."""
    return min(lim.cooldown_max_s, lim.cooldown_s * 2 ** min(b.reopens, 30))


def admits(b: Breaker, lim: BreakerLimits, draw: float) -> bool:
    """Should a producer send? ``draw`` is uniform in [0, 1)."""
    if b.state == CLOSED:
        return True
    if b.state == HALF_OPEN:
        return draw < lim.half_open_share
    return False


def retry_after_s(b: Breaker, lim: BreakerLimits, now_ms: int) -> float:
    """How long a refused producer should wait before trying again (at least 0.1 s)."""
    if b.state == OPEN and not b.forced:
        return max(0.1, cooldown_s(b, lim) - (now_ms - b.since_ms) / 1000)
    return max(0.1, lim.cooldown_s)


@dataclass(frozen=True, slots=True)
class Snapshot:
    breaker: Breaker
    version: int
    limits: BreakerLimits


def hash_fields(b: Breaker, lim: BreakerLimits) -> dict[str, str]:
    out = {k: str(int(v) if isinstance(v, bool) else v) for k, v in asdict(b).items()}
    out.update({"cooldown_ms": str(int(lim.cooldown_s * 1000)),
                "cooldown_max_ms": str(int(lim.cooldown_max_s * 1000)),
                "half_open_share": str(lim.half_open_share)})
    return out


def parse(raw: dict[bytes, bytes], defaults: BreakerLimits) -> Snapshot:
    """The stored state; producers also take the writer's cool-down and share from it."""
    f = {k.decode(): v.decode() for k, v in raw.items()}
    b = Breaker(state=f.get("state", "closed"), since_ms=int(f.get("since_ms", 0)),
                reason=f.get("reason", ""), failures=int(f.get("failures", 0)),
                forced=f.get("forced", "0") == "1", opened=int(f.get("opened", 0)),
                reopens=int(f.get("reopens", 0)))
    limits = replace(
        defaults,
        cooldown_s=int(f.get("cooldown_ms", defaults.cooldown_s * 1000)) / 1000,
        cooldown_max_s=int(f.get("cooldown_max_ms", defaults.cooldown_max_s * 1000)) / 1000,
        half_open_share=float(f.get("half_open_share", defaults.half_open_share)))
    return Snapshot(b, int(f.get("version", 0)), limits)
