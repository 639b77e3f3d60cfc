"""The benchmarks in their tiny modes, so they never rot (their numbers are not asserted).

`make bench-smoke` runs these after `make test` in CI: they measure rather than test, and
would double the suite's time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_prints_the_table_and_writes_json_and_png(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "betstream ÷ this" in done.stdout and "latency from stream ingress" in done.stdout
    (report,) = tmp_path.glob("*-smoke.json")
    results = json.loads(report.read_text())
    assert set(results["throughput"]) == {
        "betstream", "betstream, no commit overlap, batch 1000", "naive per-bet transaction", "RQ job per bet (SimpleWorker)",
        "RQ job per bet (Worker, fork)"}
    assert all(r["per_s"] > 0 for r in results["throughput"].values())
    betstream = results["throughput"]["betstream"]
    assert betstream["runs_speed_index_ms"][0] > 0, \
        "the machine's speed is recorded beside the drain"
    assert betstream["cpu_us_per_intent"] > 0 and 0 < betstream["cores_busy"] <= 1, \
        "the CPU a drain cost, and how busy the cores were, are recorded beside it"
    assert "CPU per intent (writer, child, Redis)" in done.stdout
    streamed = results["sustained"]
    assert streamed["producers"] == 2 and streamed["intents"] >= 2_000, \
        "two producers streamed while the writer committed"
    assert streamed["offered_per_s"] > 0 and streamed["committed_per_s"] > 0
    assert streamed["audit_clean"] is True, "the streamed ledger passes betstream audit"
    assert "sustained: 2 producers streaming" in done.stdout
    assert list(tmp_path.glob("*-smoke.png")), "the chart was drawn"
    framed = results["subscribers"]
    assert framed["frames"] == framed["intents"] > 0, "every confirmation reached a socket"
    assert "with WebSockets: the frame" in done.stdout
    market = results["market_settlement"]
    assert market["market_per_s"] > 0 and market["per_bet_per_s"] > 0, "both ways measured"
    assert market["audit_clean"] is True and "resulting a market of" in done.stdout


@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind is not installed (make test installs it)")
def test_instructions_bench_counts_the_writer_under_callgrind(tmp_path: Path) -> None:
    """`make bench-instructions` in a tiny mode."""
    done = subprocess.run([sys.executable, "-m", "bench.instructions", "--intents", "1000",
                           "--drain-timeout-s", "300", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "writer instructions (callgrind)" in done.stdout
    (report,) = tmp_path.glob("*-instructions.json")
    row = json.loads(report.read_text())["this checkout"]
    assert row["accepted"] == row["intents"] == 1000, "every intent drained and committed"
    assert row["instructions"] > 1_000_000 and row["per_intent"] > 0
