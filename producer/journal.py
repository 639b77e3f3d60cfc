"""A producer's durable journal of what Redis *told* it: one line per acknowledged XADD.

A producer can only know what it was told. After each pipelined chunk of XADDs is answered,
the journal appends one JSON line per entry -- intent id, stream entry id, kind, user --
and flushes (with ``fsync=True`` it also fsyncs, surviving a power cut of the producer's
machine, not only a kill of its process). ``betstream reconcile`` later compares the
journals with the ledger's outcomes: an acknowledged intent without an outcome was lost
by Redis (e.g. the last second before a crash under AOF ``appendfsync everysec``).

A line is written only after the reply, so the journal never claims more than Redis
acknowledged; an XADD answered just before the producer died may be missing from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from producer import constants as c
from producer.client import Producer
from producer.contract import Intent
from producer.errors import JournalError
from producer.signing import Key


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged XADD: Redis stored ``intent_id`` as stream entry ``entry_id``."""

    intent_id: str
    entry_id: str
    kind: str
    user_id: int

    def line(self) -> str:
        return json.dumps({"id": self.intent_id, "entry": self.entry_id, "kind": self.kind,
                           "user": self.user_id}, separators=(",", ":")) + "\n"


def ack_for(fields: dict[str, str | bytes], entry_id: str) -> Ack:
    """The journal record of a signed entry (its body names the intent) and its reply."""
    body = json.loads(fields[c.FIELD_BODY])
    return Ack(str(body["id"]), entry_id, str(body["kind"]), int(body["user_id"]))


class Journal:
    """Append-only writer; one ``record`` call per answered pipelined chunk."""

    def __init__(self, path: Path | str, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        self.records = 0

    def record(self, acks: Iterable[Ack]) -> None:
        """Append and flush: after this returns, a kill of this process loses none of it."""
        self._file.write("".join(a.line() for a in acks))
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def record_fields(self, chunk: Sequence[dict[str, str | bytes]],
                      entry_ids: Sequence[str]) -> None:
        acks = [ack_for(f, e) for f, e in zip(chunk, entry_ids, strict=True)]
        self.records += len(acks)
        self.record(acks)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class JournaledProducer:
    """Wraps a :class:`producer.client.Producer`: every answered chunk lands in the journal.

    ``JournaledProducer(Producer(redis, keyring), Journal("var/producer.journal"))`` has the
    producer's ``submit``, ``submit_many`` and ``submit_fields``.
    """

    def __init__(self, producer: Producer, journal: Journal) -> None:
        self.producer = producer
        self.journal = journal

    def key_for(self, kind: str) -> Key:
        return self.producer.key_for(kind)

    def fields_for(self, intent: Intent) -> dict[str, str | bytes]:
        return self.producer.fields_for(intent)

    def submit(self, intent: Intent) -> str:
        return self.submit_fields([self.fields_for(intent)])[0]

    def submit_many(self, intents: Iterable[Intent]) -> list[str]:
        return self.submit_fields([self.fields_for(i) for i in intents])

    def submit_fields(self, entries: Iterable[dict[str, str | bytes]]) -> list[str]:
        """Per pipelined chunk: XADD, then journal the replies (so a failing later chunk
        leaves the earlier ones journaled)."""
        entries = list(entries)
        size = max(1, self.producer.pipeline_size_max)
        ids: list[str] = []
        for start in range(0, len(entries), size):
            chunk = entries[start:start + size]
            replies = self.producer.submit_fields(chunk)
            self.journal.record_fields(chunk, replies)
            ids.extend(replies)
        return ids


def read_journal(path: Path | str) -> tuple[list[Ack], int]:
    """All records of one journal, and how many torn final lines were skipped.

    Only the last line may be torn (the producer died mid-write); a bad line anywhere else
    means the file is not a journal, and is refused.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from exc
    lines = text.split("\n")
    acks, torn = [], 0
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            acks.append(_parse(line))
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):  # no newline after it: a torn last write
                torn += 1
                continue
            raise JournalError(f"{path}:{number}: not a journal line ({exc})") from exc
    return acks, torn


def _parse(line: str) -> Ack:
    raw = json.loads(line)
    ack = Ack(str(raw["id"]), str(raw["entry"]), str(raw["kind"]), int(raw["user"]))
    ms, _, seq = ack.entry_id.partition("-")
    if not (ms.isdigit() and seq.isdigit()):
        raise ValueError(f"entry id {ack.entry_id!r}")
    return ack
