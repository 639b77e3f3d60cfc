"""Writer RSS over a long run: must stay flat (within 20%) from 1M to 5M intents.

The writer and confirmer run throughout; waves of 1M signed intents are pushed by 2
producers, and the writer's RSS is read from /proc after each wave has drained. Prints a
line per wave and writes them to ``bench/results/<date>-memory.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from bench.harness import private_env, wait
from bench.throughput import children_stats, proc_stats
from workers.adapters.intent_stream import backlog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--wave-size", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out) / (dt.datetime.now().strftime("%Y-%m-%d") + "-memory.jsonl")
    with private_env() as env:
        retention = {"BETSTREAM_INTENTS_RETENTION_MS": "0"}
        writer = env.start("writer", **retention)
        env.start("confirmer")
        client = env.client()
        wait(lambda: backlog(client) is not None, 30, "the writer's group")
        rows = []
        for wave in range(1, args.waves + 1):
            per = args.wave_size // 2
            producers = [env.start("load", "--users", "5000", "--bets", str(per - 5000),
                                   "--user-first", str(1 + i * 5000), "--deposit", "10000000000",
                                   "--quiet", "--seed", str(wave * 10 + i)) for i in range(2)]
            for p in producers:
                p.wait(3600)
            wait(lambda: backlog(client) == (0, 0), 3600, "the wave to drain", interval_s=0.5)
            cpu, rss = proc_stats(writer.pid)
            child_cpu, child_rss = children_stats(writer.pid)
            redis_mb = client.info("memory")["used_memory"] / 2**20
            rows.append({"intents": wave * args.wave_size, "writer_rss_mb": round(rss / 2**20, 1),
                         "writer_cpu_s": cpu, "admission_rss_mb": round(child_rss / 2**20, 1),
                         "admission_cpu_s": child_cpu, "redis_used_mb": round(redis_mb, 1)})
            print(json.dumps(rows[-1]), flush=True)
        first, last = rows[0]["writer_rss_mb"], rows[-1]["writer_rss_mb"]
        child_first, child_last = rows[0]["admission_rss_mb"], rows[-1]["admission_rss_mb"]
        summary = {"rss_growth_pct": round(100 * (last - first) / first, 1),
                   "admission_rss_growth_pct": round(
                       100 * (child_last - child_first) / child_first, 1)
                   if child_first else None}
        print(json.dumps(summary))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in [*rows, summary]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
