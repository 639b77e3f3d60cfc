"""Throughput of the real ``betstream writer`` draining a prefilled stream.

Producers fill the stream first (2 processes, signed mixed deposits and bets, hot users),
then the writer starts and drains it: committed (durable) intents per second, batch
sizes, writer CPU seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Final

from bench.harness import Env, private_env, wait
from workers.adapters.intent_stream import backlog

CLK_TCK = 100
CORES_USED_MAX = 2  # the machine benchmarked: what two fully busy cores would give


def cpu_times() -> tuple[int, int]:
    """(busy, all) clock ticks of the whole machine so far, from /proc/stat (steal and
    iowait count as not busy: the drain could not use them)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if line.startswith("VmRSS:"))
    return cpu, rss_kb * 1024


def children_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) summed over a process's live children: the writer's
    admission child does part of the writer's work and must be counted with it."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    cpu, rss = 0.0, 0
    for child in (children.read_text().split() if children.exists() else []):
        try:
            c_cpu, c_rss = proc_stats(int(child))
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
        cpu, rss = cpu + c_cpu, rss + c_rss
    return cpu, rss


def prefill(env: Env, intents: int, producers: int = 2, users: int = 10_000) -> None:
    """``intents`` signed intents from ``producers`` processes: deposits first, then bets."""
    users = max(producers, min(users, intents // 4))
    per = intents // producers
    per_users = users // producers
    procs = [env.start("load", "--users", str(per_users), "--bets", str(per - per_users),
                       "--user-first", str(1 + i * per_users), "--deposit", "100000000",
                       "--quiet", "--seed", str(i)) for i in range(producers)]
    for p in procs:
        if p.wait(600) != 0:
            raise RuntimeError("a producer failed; see its log in " + str(env.dir))


# A pre-filled stream makes its last entries wait for the whole drain: with the default
# 60 s window, a large N would turn them into cheap ``stale`` rejections and flatter the
# rate (a 1M drain had ~170k). The window (and the nonce TTL above it) is lifted here.
DRAIN_WINDOW: Final = {"BETSTREAM_INTENT_AGE_MAX_MS": "3600000", "BETSTREAM_NONCE_TTL_S": "3700"}


def measure_writer(env: Env, intents: int, **settings: str) -> dict[str, float]:
    prefill(env, intents)
    client = env.client()
    total = client.xlen("betstream:intents")
    redis_pid = int(client.info("server")["process_id"])
    redis_cpu_before, _ = proc_stats(redis_pid)
    machine_before = cpu_times()
    writer = env.start("writer", **{**DRAIN_WINDOW, **settings})
    started = time.perf_counter()
    peak_rss = peak_child_rss = 0

    def done() -> bool:
        nonlocal peak_rss, peak_child_rss
        peak_rss = max(peak_rss, proc_stats(writer.pid)[1])
        peak_child_rss = max(peak_child_rss, children_stats(writer.pid)[1])
        return backlog(client) == (0, 0)

    wait(done, 900, "the writer to drain", interval_s=0.02)
    seconds = time.perf_counter() - started
    machine_after = cpu_times()
    cpu, _ = proc_stats(writer.pid)
    child_cpu, _ = children_stats(writer.pid)
    redis_cpu = proc_stats(redis_pid)[0] - redis_cpu_before
    batches = env.query("SELECT COUNT(*), AVG(rows) FROM batches")[0]
    accepted = env.query("SELECT COUNT(*) FROM outcomes WHERE status = 'accepted'")[0][0]
    return {"intents": total, "accepted": accepted, "seconds": round(seconds, 2),
            "per_s": round(total / seconds),
            "batches": batches[0], "writer_cpu_s": round(cpu, 2),
            "writer_rss_mb": round(peak_rss / 2**20, 1),
            "admission_cpu_s": round(child_cpu, 2),
            "admission_rss_mb": round(peak_child_rss / 2**20, 1),
            "redis_cpu_s": round(redis_cpu, 2), **cpu_budget(
                total, cpu + child_cpu + redis_cpu, machine_before, machine_after)}


def cpu_budget(intents: int, cpu_s: float, before: tuple[int, int],
               after: tuple[int, int]) -> dict[str, float]:
    """CPU per intent over the writer, its child and Redis, how busy the machine's cores
    were meanwhile, and what that cost per intent allows on two fully busy cores: on a
    shared machine whose speed drifts, this says whether a rate is bound by CPU (cores
    busy, rate near the cap) or by waiting (cores idle)."""
    busy, every = after[0] - before[0], after[1] - before[1]
    us = cpu_s / max(intents, 1) * 1e6
    return {"cpu_us_per_intent": round(us, 1), "cores_busy": round(busy / max(every, 1), 3),
            "two_core_cap_per_s": round(CORES_USED_MAX * 1e6 / us) if us else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intents", type=int, default=200_000)
    args = parser.parse_args()
    with private_env() as env:
        print(json.dumps(measure_writer(env, args.intents), indent=2))


if __name__ == "__main__":
    main()
