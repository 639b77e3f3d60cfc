"""Producer-side reconciliation: what Redis acknowledged against what the ledger holds. Pure.

Inputs are two collections: the producers' journal records (each an acknowledged XADD)
and, per intent id, how many outcomes and effects the ledger recorded. An acknowledged
intent without an outcome is *lost* (Redis dropped the entry before the writer read it,
e.g. the last second before a crash under ``appendfsync everysec``); an intent with more
than one outcome or with postings from more than one batch is *doubled*. The entry-id
time range of the lost ones tells whether the loss fits the fsync policy's window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from producer.journal import Ack


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the ledger holds for one intent id."""

    outcomes: int = 1  # outcome rows (id_conflict rows excluded: they never take the id)
    effects: int = 0  # distinct batches that posted ledger rows for it (0 if rejected)

    @property
    def doubled(self) -> bool:
        return self.outcomes > 1 or self.effects > 1


@dataclass(frozen=True)
class Reconciliation:
    acknowledgements: int  # journal lines (re-sends of one intent count each time)
    intents: int  # distinct acknowledged intent ids
    with_outcome: int
    lost: list[str]  # acknowledged intent ids with no outcome (and not dead-lettered)
    lost_entry_ms: tuple[int, int] | None  # first and last ingress time of the lost entries
    doubled: list[str]  # every intent id in the ledger with more than one effect
    dead_lettered: list[str] = field(default_factory=list)  # refused at authentication
    torn_lines: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.doubled

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "acknowledgements": self.acknowledgements,
                "intents": self.intents, "with_outcome": self.with_outcome,
                "lost": len(self.lost), "lost_ids": self.lost,
                "lost_entry_ms": list(self.lost_entry_ms) if self.lost_entry_ms else None,
                "doubled": len(self.doubled), "doubled_ids": self.doubled,
                "dead_lettered": len(self.dead_lettered),
                "dead_lettered_ids": self.dead_lettered, "torn_lines": self.torn_lines}


def entry_ms(entry_id: str) -> int:
    """Ingress time of a stream entry id ``<ms>-<seq>``."""
    return int(entry_id.partition("-")[0])


def reconcile(acks: Iterable[Ack], recorded: Mapping[str, Recorded],
              dead_entries: Iterable[str] = (), torn_lines: int = 0) -> Reconciliation:
    """Compare acknowledgements with the ledger; ``dead_entries``: dead-lettered entry ids."""
    entries: dict[str, list[str]] = {}
    for ack in acks:
        entries.setdefault(ack.intent_id, []).append(ack.entry_id)
    lost, refused = _without_outcome(entries, recorded, set(dead_entries))
    lost_ms = [entry_ms(e) for i in lost for e in entries[i]]
    doubled = sorted(i for i, r in recorded.items() if r.doubled)
    return Reconciliation(
        acknowledgements=sum(len(v) for v in entries.values()), intents=len(entries),
        with_outcome=len(entries) - len(lost) - len(refused), lost=sorted(lost),
        lost_entry_ms=(min(lost_ms), max(lost_ms)) if lost_ms else None, doubled=doubled,
        dead_lettered=sorted(refused), torn_lines=torn_lines)


def _without_outcome(entries: Mapping[str, list[str]], recorded: Mapping[str, Recorded],
                     dead: set[str]) -> tuple[list[str], list[str]]:
    """(lost, refused): acknowledged intents the ledger has no outcome for; refused ones
    had an entry dead-lettered (never applied, on purpose)."""
    lost, refused = [], []
    for intent_id, ids in entries.items():
        if intent_id not in recorded:
            (refused if any(e in dead for e in ids) else lost).append(intent_id)
    return lost, refused
