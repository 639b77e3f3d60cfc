"""Ingress -> commit and ingress -> confirmation latency at a steady offered rate.

Exact per-intent numbers, not histogram buckets: ingress is the intent's stream entry id,
commit is ``outcomes.committed_at``, confirmation is the id the confirmer's XADD got on
``betstream:confirmations``.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.harness import Env, percentile, private_env, wait
from bench.throughput import children_stats, proc_stats
from workers.adapters.intent_stream import backlog

CONFIRMATIONS_KEPT = 10_000_000


def measure(env: Env, rate: float, seconds: float, users: int = 1000) -> dict[str, object]:
    # Every confirmation must stay readable to be timed: lift the stream's retention bound
    # (200k by default, kept by the confirmer), which 80 % of the maximum for 30 s exceeds.
    env.start("writer")
    confirmer = env.start("confirmer", BETSTREAM_CONFIRMATIONS_LEN_MAX=str(CONFIRMATIONS_KEPT))
    client = env.client()
    wait(lambda: backlog(client) is not None, 30, "the writer's consumer group")
    bets = max(1, int(rate * seconds) - users)
    env.run("load", "--users", str(users), "--bets", str(bets), "--rate", str(rate),
            "--deposit", "100000000", "--quiet")
    wait(lambda: backlog(client) == (0, 0), 300, "the writer to drain")
    total = env.query("SELECT COUNT(*) FROM outcomes")[0][0]
    wait(lambda: client.xlen("betstream:confirmations") >= total, 300, "every confirmation")
    confirmer_cpu_s = proc_stats(confirmer.pid)[0] + children_stats(confirmer.pid)[0]
    return {**summarise(env, client, rate, seconds, total),
            "confirmer_cpu_us_per_outcome": round(confirmer_cpu_s / max(total, 1) * 1e6, 1)}


def summarise(env: Env, client, rate: float, seconds: float, total: int) -> dict[str, object]:
    ingress = {i: int(e.split("-")[0]) for i, e in
               env.query("SELECT id, entry_id FROM outcomes")}
    committed = [c - ingress[i] for i, c in env.query("SELECT id, committed_at FROM outcomes")]
    confirmed = []
    for entry_id, fields in client.xrange("betstream:confirmations"):
        outcome = json.loads(fields[b"outcome"])
        confirmed.append(int(entry_id.decode().split("-")[0]) - ingress[outcome["id"]])
    return {"offered_per_s": rate, "seconds": seconds, "intents": total,
            **{f"commit_p{k}_ms": percentile(committed, q) for k, q in PCTS},
            **{f"confirm_p{k}_ms": percentile(confirmed, q) for k, q in PCTS},
            "cdf_confirm_ms": cdf_points(confirmed), "cdf_commit_ms": cdf_points(committed)}


def cdf_points(values: list[int], points: int = 200) -> list[int]:
    """``points`` evenly spaced quantiles: enough to draw a CDF, small enough for JSON."""
    ordered = sorted(values)
    if not ordered:
        return []
    return [ordered[min(len(ordered) - 1, i * len(ordered) // points)] for i in range(points)]


PCTS = (("50", 0.50), ("99", 0.99), ("999", 0.999))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    started = time.time()
    with private_env() as env:
        result = measure(env, args.rate, args.seconds)
    result["wall_s"] = round(time.time() - started, 1)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("cdf_")}, indent=2))


if __name__ == "__main__":
    main()
