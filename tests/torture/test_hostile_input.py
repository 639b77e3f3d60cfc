"""Scenario 4: hostile input. Fuzzed and mutated stream entries, each with the result the
wire contract gives it (tests/torture/hostile.py), pushed through the pure intake for volume
and through the real stream to a real writer process.

Every entry must get exactly its expected result (a dead letter with the named reason, or
the named outcome), the writer must survive all of it (same pid from start to end, no
traceback) and its memory must stay bounded: RSS is read from /proc/<pid>/status after a
warm-up round and after each further round of the same hostile load. A leak grows per round.

tests/unit/test_hostile_bodies.py already throws arbitrary JSON *shapes* at admit(); this
adds the framing, encoding, signature and key attacks, with the exact reason asserted.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producer import constants as c
from producer.contract import BODY_BYTES_MAX, now_ms, parse_intent
from producer.errors import ContractError
from producer.signing import sign
from tests.conftest import Procs, wait_for
from tests.support import deadletters, drained, query
from tests.torture.hostile import (
    BUILDERS,
    FUNDED_USER,
    KEYRING,
    RING,
    Case,
    cases,
    entry,
    json_bomb,
    valid,
)
from tests.torture.report import scaled
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter, admit

BIG_BODY_BYTES = 1 << 20  # a few 1 MiB bodies per round: read, refused, freed
# After the first round, RSS may grow only as much as the ledger (SQLite's page cache holds
# its pages) plus allocator noise; measured: <= 2 MB without the 1 MiB bodies, <= 25 MB in
# full size with them. A leak of the refused bodies alone would add 4 MiB (16 in full) per
# round, i.e. 20 MiB (300 in full) by the end.
RSS_EXCESS_KB_MAX = scaled(12, 48) * 1024


def result_of(result: Candidate | DeadLetter) -> str:
    if isinstance(result, DeadLetter):
        return f"dead:{result.reason}"
    return result.pre_reason or "ok"


def check(case: Case, result: Candidate | DeadLetter) -> None:
    assert result_of(result) == case.expect, (case.category, case.fields.get(b"body", b"")[:300])
    if case.expect == "ok":
        assert isinstance(result, Candidate) and result.intent is not None


# --- the pure intake, for volume ---------------------------------------------------------


def test_hostile_entries_through_intake(torture_report) -> None:
    row = torture_report("hostile input: intake admit() (pure)")
    rnd, now, seen = random.Random(20261125), now_ms(), Counter()
    total = scaled(20_000, 200_000)
    for i, case in enumerate(cases(rnd, total, now)):
        check(case, admit(f"{now + 1}-{i}", case.fields, RING))
        seen[case.category] += 1
    examples = _hypothesis_rounds()
    row.intents = total + examples
    row.faults = (f"{total:,} generated hostile entries in {len(seen)} categories + "
                  f"{examples:,} hypothesis examples (builders, byte mutations, re-signed "
                  "mutations)")
    row.extra.update(inputs=row.intents, categories=dict(sorted(seen.items())))
    row.lost = row.doubled = 0  # every input got exactly one classification (checked)
    row.audit = "n/a"
    assert len(seen) >= len(BUILDERS) - 1  # every attack was tried


def _hypothesis_rounds() -> int:
    count = [0]
    budget = settings(max_examples=scaled(300, 3_000), deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    @budget  # not json_bomb: hypothesis raises the recursion limit while it runs a test
    @given(st.randoms(use_true_random=False),
           st.sampled_from([b for b in BUILDERS if b is not json_bomb]))
    def builders(rnd: random.Random, build) -> None:
        count[0] += 1
        now = now_ms()
        case = build(rnd, now)
        check(case, admit(f"{now + 1}-0", case.fields, RING))

    @budget
    @given(st.randoms(use_true_random=False), st.lists(st.tuples(
        st.integers(0, 400), st.integers(0, 3), st.binary(min_size=1, max_size=4)),
        min_size=1, max_size=4), st.booleans())
    def mutations(rnd: random.Random, edits, resign: bool) -> None:
        count[0] += 1
        now = now_ms()
        base = valid(rnd, now)
        body = _mutate(base.fields[b"body"], edits)
        if body == base.fields[b"body"]:
            return
        kid = base.fields[b"kid"].decode()
        fields = entry(body, kid) if resign else {**base.fields, b"body": body}
        result = admit(f"{now + 1}-0", fields, RING)
        if len(body) > BODY_BYTES_MAX:
            assert result_of(result) == "dead:too_large"
        elif not resign:
            assert result_of(result) == "dead:bad_signature"
        else:
            _differential(body, kid, result)

    builders()
    mutations()
    return count[0]


def _mutate(body: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Insert, overwrite, delete or duplicate bytes at the given positions."""
    out = bytearray(body)
    for pos, op, data in edits:
        pos = pos % (len(out) + 1)
        if op == 0:
            out[pos:pos] = data
        elif op == 1:
            out[pos:pos + len(data)] = data
        elif op == 2:
            del out[pos:pos + len(data)]
        else:
            out[pos:pos] = out[pos:pos + len(data) * 8]
    return bytes(out)


def _differential(body: bytes, kid: str, result: Candidate | DeadLetter) -> None:
    """A re-signed mutation: the slow pydantic path is the oracle for validity."""
    allowed = RING.get(kid).kinds
    try:
        intent = parse_intent(body)
    except ContractError:
        intent = None
    if intent is not None:
        expected = "ok" if intent.kind in allowed else "forbidden_kind"
        assert result_of(result) == expected
        return
    got = result_of(result)
    assert got in ("dead:malformed", "invalid", "forbidden_kind"), got
    if isinstance(result, Candidate):  # the user told must be the one the body names
        raw = json.loads(body)
        assert (raw["id"], raw["kind"], raw["user_id"]) == \
            (result.id, result.kind, result.user_id)
        assert (got == "forbidden_kind") == (result.kind not in allowed)


# --- a live writer process -----------------------------------------------------------------


def rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


def ledger_kb(db: str) -> int:
    """The ledger's size on disk (file + WAL): SQLite's page cache (up to 256 MiB, see
    store.CACHE_MB_DEFAULT) legitimately grows with it."""
    return sum(p.stat().st_size for p in Path(db).parent.glob(Path(db).name + "*")) // 1024


def test_hostile_entries_to_a_live_writer(procs: Procs, redis_client: redis.Redis,
                                          env: dict[str, str], torture_report) -> None:
    row = torture_report("hostile input: live writer process")
    Path(env["BETSTREAM_KEYRING"]).write_text(json.dumps(KEYRING))
    writer = procs.start("writer")
    db = env["BETSTREAM_DB"]
    fund = entry(json.dumps({"id": "00000000-0000-4000-8000-000000000001", "kind": "deposit",
                             "user_id": FUNDED_USER, "amount": 10**12, "nonce": "f" * 32,
                             "issued_at": now_ms()}, separators=(",", ":")).encode(), "cashier")
    redis_client.xadd(c.STREAM_INTENTS, fund)
    wait_for(lambda: drained(redis_client), 60, "the writer to commit the funding deposit")
    rounds, per_round = scaled(6, 20), scaled(600, 3_000)
    sent: dict[str, Case] = {}
    rss, ledger = [rss_kb(writer.pid)], [ledger_kb(db)]
    rnd = random.Random(8)
    for _ in range(rounds):
        batch = cases(rnd, per_round, now_ms()) + [_big(rnd) for _ in range(scaled(4, 16))]
        batch += [repeated_field(rnd, now_ms()) for _ in range(scaled(10, 50))]
        pipe = redis_client.pipeline(transaction=False)
        for case in batch:  # field lists, not dicts: a name may be given twice
            pairs = case.fields.items() if isinstance(case.fields, dict) else case.fields
            pipe.execute_command("XADD", c.STREAM_INTENTS, "*", *[x for p in pairs for x in p])
        sent.update((eid.decode(), case) for eid, case in zip(pipe.execute(), batch))
        wait_for(lambda: drained(redis_client), 120, "the writer to work through the round")
        assert writer.poll() is None, "the writer died"
        rss.append(rss_kb(writer.pid))
        ledger.append(ledger_kb(db))
    lost, doubled, wrong = _compare(db, redis_client, sent)
    audit = procs.run("audit")
    log = Path(writer.log_path).read_text()
    row.intents = len(sent)
    row.faults = (f"{len(sent):,} hostile entries ({len(BUILDERS)} attack builders, "
                  f"{rounds} rounds, {rounds * scaled(4, 16)} bodies of 1 MiB, repeated stream "
                  "fields) to one writer")
    row.lost, row.doubled = lost, doubled
    row.audit = "pass" if audit.returncode == 0 else "FAIL"
    row.extra.update(inputs=len(sent), writer_pid=writer.pid, rss_kb=rss, ledger_kb=ledger,
                     wrong_results=wrong)
    assert wrong == [] and lost == 0 and doubled == 0
    assert audit.returncode == 0, audit.stdout
    assert writer.poll() is None and "Traceback" not in log
    excess = [(r - rss[1]) - (size - ledger[1]) for r, size in zip(rss[1:], ledger[1:])]
    row.extra["rss_excess_kb_max"] = max(excess)
    assert max(excess) < RSS_EXCESS_KB_MAX, (rss, ledger)


def repeated_field(rnd: random.Random, now: int) -> Case:
    """An entry naming a field twice (Redis keeps both; redis-py keeps the last)."""
    case = valid(rnd, now)
    again = valid(rnd, now).fields
    name = rnd.choice([b"v", b"kid", b"body", b"sig"])
    pairs = [*case.fields.items(), *[(n, again[n]) for n in (name, b"sig") if n != b"v"]]
    if name == b"v":
        pairs.append((b"v", b"1"))
    return Case("repeated stream field", pairs, "dead:malformed")  # type: ignore[arg-type]


def _big(rnd: random.Random) -> Case:
    body = rnd.randbytes(BIG_BODY_BYTES)
    return Case("huge body", entry(body, "cashier", sign(RING.get("cashier"), body[:10])),
                "dead:too_large")


def _compare(db: str, client: redis.Redis, sent: dict[str, Case]) -> tuple[int, int, list]:
    """lost: an entry with no result at all; doubled: one with more than one result."""
    dead: dict[str, list[str]] = {}
    for d in deadletters(client):
        dead.setdefault(d["entry_id"], []).append(d["reason"])
    rows: dict[str, list[tuple[str, str | None]]] = {}
    for entry_id, status, reason in query(db, "SELECT entry_id, status, reason FROM outcomes"):
        rows.setdefault(entry_id, []).append((status, reason))
    lost = doubled = 0
    wrong = []
    for entry_id, case in sent.items():
        results = [f"dead:{r}" for r in dead.get(entry_id, [])]
        results += ["ok" if s == "accepted" else str(r) for s, r in rows.get(entry_id, [])]
        lost += not results
        doubled += len(results) > 1
        if results and results[0] != case.expect:
            wrong.append((case.category, case.expect, results))
    return lost, doubled, wrong[:20]
