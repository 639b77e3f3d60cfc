"""How long the writers have been silent, as one watcher (a gateway, a standby writer) can
tell from their health beacons. Pure: the clock and what was read are arguments.

A writer's sign of life is the newest ``beat_ms`` of a beacon that says it is starting,
leading or retrying (a standby writer commits nothing). Beacons expire
(``HEALTH_TTL_MS``), so the watcher remembers the newest beat it saw. A watcher that never
saw one counts from when it first found intents waiting with no writer alive, and forgets
that once nothing waits: one that has just started never trips at once, and a trip always
takes ``WRITER_SILENT_MAX_MS`` of beacon age or of observation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

LIVE_STATES: Final = frozenset({"starting", "leading", "retrying"})


@dataclass(frozen=True, slots=True)
class Silence:
    """What one watcher knows of the writers' last sign of life."""

    last_beat_ms: int | None = None  # the newest beat of a live writer it saw
    unseen_since_ms: int | None = None  # none seen: since when intents wait with no writer
    waiting: int = 0  # intents waiting (pending + undelivered) at the last look


def newest_live_beat(beacons: Iterable[Mapping[str, str]]) -> int | None:
    """The newest ``beat_ms`` of the beacons of writers that are not on standby."""
    beats = [int(b["beat_ms"]) for b in beacons
             if b.get("state") in LIVE_STATES and b.get("beat_ms", "").isdigit()]
    return max(beats, default=None)


def observe(s: Silence, now_ms: int, beat_ms: int | None, waiting: int) -> Silence:
    """The watcher found ``beat_ms`` (the newest live beat; None: no live beacon) and
    ``waiting`` intents at ``now_ms``."""
    last = s.last_beat_ms
    if beat_ms is not None:
        beat = min(beat_ms, now_ms)  # a writer's clock ahead of ours: alive now
        last = beat if last is None else max(last, beat)
    unseen = None
    if last is None and waiting > 0:
        unseen = now_ms if s.unseen_since_ms is None else s.unseen_since_ms
    return Silence(last, unseen, waiting)


def overdue_ms(s: Silence, now_ms: int, silent_max_ms: int) -> int | None:
    """How long no writer has shown a sign of life, if that is at least ``silent_max_ms``
    while intents wait; None otherwise (nothing waits, a writer is alive, or too soon)."""
    since = s.last_beat_ms if s.last_beat_ms is not None else s.unseen_since_ms
    if since is None or s.waiting <= 0:
        return None
    silent = now_ms - since
    return silent if silent >= silent_max_ms else None
