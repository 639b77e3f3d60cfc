"""Sustained rate: producer processes stream signed intents at a steady offered rate while
the writer commits them. Did the writer keep up?

A pre-filled drain (``bench.throughput``) measures the writer with the machine to itself.
Here the producers run at the same time, on the same two cores, as they would in
production, and the writer keeps the default freshness window: an intent that waited
past it is rejected ``stale``, and counted as such. The writer kept up when what was
offered was committed at the rate it was offered (the commit rate over the run's steady
middle) and the commit lag stayed bounded instead of growing with the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, Final

from bench.harness import Env, percentile, private_env, wait
from bench.throughput import children_stats, cpu_times, proc_stats
from workers.adapters.intent_stream import backlog

PRODUCERS_DEFAULT: Final = 2
USERS_DEFAULT: Final = 10_000
STEADY_TRIM_FRACTION: Final = 0.2  # the first and last 20 % of the run are ramp-up/down
KEPT_UP_RATIO_MIN: Final = 0.97  # steady commit rate over offered rate
KEPT_UP_LAG_P99_MAX_MS: Final = 1_000  # lag that does not grow stays well under this


def measure(env: Env, rate: float, seconds: float, producers: int = PRODUCERS_DEFAULT,
            users: int = USERS_DEFAULT, confirmer: bool = False) -> dict[str, Any]:
    writer = env.start("writer")
    if confirmer:
        env.start("confirmer")
    client = env.client()
    wait(lambda: backlog(client) is not None, 30, "the writer's consumer group")
    redis_pid = int(client.info("server")["process_id"])
    before = _cpu_s(writer.pid, redis_pid), cpu_times()
    shed = _stream(env, rate, seconds, producers, users)
    wait(lambda: backlog(client) == (0, 0), 300, "the writer to commit the rest")
    after = _cpu_s(writer.pid, redis_pid), cpu_times()
    summary = summarise(env.query("SELECT entry_id, committed_at, reason FROM outcomes"),
                        rate, seconds, producers, shed)
    return {**summary, **_cpu_while_streaming(before, after, summary["intents"]),
            "audit_clean": audit_clean(env)}


def audit_clean(env: Env) -> bool:
    """``betstream audit`` on the run's ledger (exit 0 only if every invariant holds):
    the rate was not bought with a broken one."""
    try:
        env.run("audit")
    except subprocess.CalledProcessError:
        return False
    return True


def _cpu_s(writer_pid: int, redis_pid: int) -> dict[str, float]:
    """CPU seconds so far of each process taking part (producers: the children waited for)."""
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"producers": own.ru_utime + own.ru_stime, "writer": proc_stats(writer_pid)[0],
            "child": children_stats(writer_pid)[0], "redis": proc_stats(redis_pid)[0]}


def _cpu_while_streaming(before: tuple[dict[str, float], tuple[int, int]],
                         after: tuple[dict[str, float], tuple[int, int]],
                         intents: int) -> dict[str, float]:
    """CPU µs per intent of each process, from the producers' start to the last commit,
    and how busy the cores were meanwhile: says whether the run was bound by the
    machine's CPU or by the writer's own critical path (cores idle while it lagged)."""
    (cpu0, (busy0, all0)), (cpu1, (busy1, all1)) = before, after
    per = {f"{name}_cpu_us": round((cpu1[name] - cpu0[name]) / max(intents, 1) * 1e6, 1)
           for name in cpu0}
    return {**per, "cores_busy": round((busy1 - busy0) / max(all1 - all0, 1), 3)}


def _stream(env: Env, rate: float, seconds: float, producers: int, users: int) -> int:
    """``producers`` processes at ``rate / producers`` each: deposits first, then bets.
    Returns how many intents the circuit breaker shed (each sent again later)."""
    users = max(producers, min(users, int(rate * seconds) // 4))
    per_users = users // producers
    per_bets = max(1, int(rate / producers * seconds) - per_users)
    procs = [env.start("load", "--users", str(per_users), "--bets", str(per_bets),
                       "--rate", str(rate / producers), "--user-first", str(1 + i * per_users),
                       "--deposit", "100000000", "--quiet", "--json", "--seed", str(i))
             for i in range(producers)]
    for proc in procs:
        if proc.wait(seconds * 4 + 120) != 0:
            raise RuntimeError("a producer failed; see its log in " + str(env.dir))
    return sum(_load_summary(env.logs[proc.pid])["shed"] for proc in procs)


def _load_summary(log: Path) -> dict[str, Any]:
    """The JSON summary ``betstream load --json`` prints at its end, among its log lines."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{") and '"sent"' in line:
            return json.loads(line)
    raise RuntimeError(f"no load summary in {log}")


def summarise(rows: list[tuple[str, int, str | None]], rate: float, seconds: float,
              producers: int, shed: int = 0) -> dict[str, Any]:
    """Offered and committed rates and the lag's percentiles over the steady middle of
    the run; the lag's maximum and the tail over all of it.

    Load the circuit breaker shed (``shed``) was not offered at the asked rate: the writer
    kept up with less than it was asked, so that run did not keep up either."""
    ingress = [int(entry_id.split("-")[0]) for entry_id, _, _ in rows]
    committed = [at for _, at, _ in rows]
    first, last = min(ingress), max(ingress)
    trim = (last - first) * STEADY_TRIM_FRACTION
    lo, hi = first + trim, last - trim
    span_s = max(hi - lo, 1) / 1000
    offered = sum(lo <= t < hi for t in ingress) / span_s
    done = sum(lo <= t < hi for t in committed) / span_s
    lags = [c - i for c, i in zip(committed, ingress, strict=True)]
    steady = [lag for lag, i in zip(lags, ingress, strict=True) if lo <= i < hi]
    p99 = percentile(steady, 0.99)  # the ramp-up (first batches, cold caches) is not load
    return {"producers": producers, "asked_per_s": rate, "seconds": seconds,
            "intents": len(rows), "offered_per_s": round(offered),
            "committed_per_s": round(done),
            "stale": Counter(reason for _, _, reason in rows)["stale"], "shed": shed,
            "lag_p50_ms": percentile(steady, 0.5), "lag_p99_ms": p99,
            "lag_max_ms": max(lags), "tail_ms": max(committed) - last,
            "kept_up": (shed == 0 and done >= KEPT_UP_RATIO_MIN * offered
                        and p99 <= KEPT_UP_LAG_P99_MAX_MS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=30_000, help="offered intents/s, total")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--producers", type=int, default=PRODUCERS_DEFAULT)
    parser.add_argument("--confirmer", action="store_true", help="run the confirmer too")
    args = parser.parse_args()
    with private_env() as env:
        print(json.dumps(measure(env, args.rate, args.seconds, args.producers,
                                 confirmer=args.confirmer), indent=2))


if __name__ == "__main__":
    main()
