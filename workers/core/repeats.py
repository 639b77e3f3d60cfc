"""Sort a batch's candidates into first-time intents and repeats. Pure.

A repeat is a redelivered entry or a re-sent intent (same id): it gets its original
outcome again, never a second effect. Same id with another body is ``id_conflict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workers.core.batch_rows import OutcomeRow, Stored
from workers.core.decision import Candidate


@dataclass(frozen=True, slots=True)
class Repeat:
    """Publish a stored outcome again; ``outcome`` is None when it is decided in this batch."""

    candidate: Candidate
    outcome: OutcomeRow | None
    duplicate: bool


def split_repeats(
    candidates: Sequence[Candidate], stored: Stored
) -> tuple[list[Candidate], list[Repeat]]:
    """First-time candidates (in order) and repeats of outcomes stored or decided earlier."""
    fresh: list[Candidate] = []
    repeats: list[Repeat] = []
    first_in_batch: dict[str, Candidate] = {}
    for cand in candidates:
        same_entry = stored.by_entry.get(cand.entry_id)
        if same_entry is not None and (same_entry.id, same_entry.body_sha) == (cand.id,
                                                                              cand.body_sha):
            repeats.append(Repeat(cand, same_entry, duplicate=False))  # a redelivery
            continue
        # (an entry id reused for another intent, e.g. after Redis lost data, is not one)
        earlier = stored.by_id.get(cand.id)
        sha = earlier.body_sha if earlier else None
        if earlier is None and cand.id in first_in_batch:
            sha = first_in_batch[cand.id].body_sha
        if sha is None:
            first_in_batch[cand.id] = cand
            fresh.append(cand)
        elif sha == cand.body_sha:
            repeats.append(Repeat(cand, earlier, duplicate=True))
        else:
            fresh.append(cand.rejected_early("id_conflict", "this id was used for another body"))
    return fresh, repeats
