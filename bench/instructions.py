"""Instructions the writer executes per intent, counted by valgrind's callgrind.

These shared machines drift by ±30 % between minutes (docs/performance.md), more than most
changes to the writer are worth, so a drain's intents/s cannot tell a 2 % gain from noise.
An instruction count does not drift: the same code draining the same kind of intents
counts the same within a fraction of a percent, whatever else the machine is doing. So
``make bench-instructions`` measures what a change does to the writer's CPU (``--compare
REV`` runs another revision in the same run), and ``make bench`` what the machine then
makes of it.

Only the writer process runs under callgrind (~50x slower): about two thirds of a drain's
CPU (docs/performance.md). Redis, the producers and the writer's admission child run
natively and are not counted; tracing the child too (``--trace-children``) gives no
count, because the writer SIGKILLs it when it stops and callgrind writes nothing for a
killed process. The lease and the child's reply timeout are lifted so the slowed writer
keeps both. Start-up (imports, compiling statements) is counted too, so a change to it
shows. Prints a table and writes ``bench/results/<date>-instructions.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from bench.harness import KEYRING_V1, ROOT, private_env, wait
from bench.throughput import DRAIN_WINDOW, prefill
from workers.adapters.intent_stream import backlog

INTENTS_DEFAULT: Final = 40_000
DRAIN_TIMEOUT_S: Final = 3_600  # a 40k drain takes ~2 minutes under callgrind here
LOG_TAIL_BYTES: Final = 2_000  # of the writer's log, shown when it failed
STOP_TIMEOUT_S: Final = 600  # callgrind writes its profile after the writer stops
UNDER_CALLGRIND: Final = {
    "BETSTREAM_LEASE_MS": "600000",  # ~50x slower: keep the lease and the child's replies
    "BETSTREAM_ADMISSION_REPLY_TIMEOUT_MS": "600000",
}
_COLLECTED = re.compile(rb"==(\d+)== Collected : (\d+)")


def count(intents: int, root: Path, console: Console,
          drain_timeout_s: float = DRAIN_TIMEOUT_S,
          keep_profile: Path | None = None) -> dict[str, Any]:
    """Prefill ``intents`` and drain them with the writer at ``root`` under callgrind.

    ``keep_profile``: where to copy callgrind's profile, for ``callgrind_annotate``
    (the private environment and its files are removed when the count is done)."""
    with private_env(keyring=KEYRING_V1) as env:  # one another revision can load
        console.print(f"  prefilling {intents:,} intents ...")
        prefill(env, intents)
        wrap = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={env.dir}/callgrind.out")
        writer = env.start("writer", root=root, wrap=wrap, **DRAIN_WINDOW, **UNDER_CALLGRIND)
        client, started = env.client(), time.monotonic()
        console.print("  draining under callgrind ...")
        wait(lambda: writer.poll() is not None or backlog(client) == (0, 0), drain_timeout_s,
             "the writer to drain", 1.0)
        if writer.poll() is None:
            writer.send_signal(signal.SIGTERM)
            writer.wait(STOP_TIMEOUT_S)
        log = next(env.dir.glob("writer-*.log")).read_bytes()
        counts = {int(pid): int(n) for pid, n in _COLLECTED.findall(log)}
        if writer.returncode != 0 or writer.pid not in counts:
            tail = log[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
            raise RuntimeError(f"the writer under callgrind exited {writer.returncode}; "
                               f"the end of its log:\n{tail}")
        if keep_profile is not None:
            shutil.copyfile(env.dir / "callgrind.out", keep_profile)
            console.print(f"  callgrind's profile: {keep_profile}")
        accepted = env.query("SELECT COUNT(*) FROM outcomes WHERE status = 'accepted'")[0][0]
        total = counts[writer.pid]
        return {"intents": intents, "accepted": accepted, "instructions": total,
                "per_intent": round(total / intents), "wall_s": round(time.monotonic() - started)}


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev`` in a temporary git worktree (sharing this checkout's .venv)."""
    path = Path(tempfile.mkdtemp(prefix="betstream-rev-"))
    try:
        added = subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), rev],
                               cwd=ROOT, capture_output=True, text=True, check=False)
        if added.returncode != 0:
            raise RuntimeError(f"cannot check out {rev}: {added.stderr.strip()}")
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                       capture_output=True, check=False)  # the rmtree below does the rest
        shutil.rmtree(path, ignore_errors=True)


def table(rows: dict[str, dict[str, Any]]) -> Table:
    t = Table(title="writer instructions (callgrind), lower is better")
    for col in ("code", "intents", "accepted", "instructions", "per intent", "÷ this checkout"):
        t.add_column(col, justify="left" if col == "code" else "right")
    mine = rows["this checkout"]["per_intent"]
    for name, r in rows.items():
        t.add_row(name, f"{r['intents']:,}", f"{r['accepted']:,}",
                  f"{r['instructions'] / 1e9:.3f} G", f"{r['per_intent']:,}",
                  f"{r['per_intent'] / mine:.3f}")
    return t


def _count_all(args: argparse.Namespace, console: Console) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    console.print("counting this checkout ...")
    rows["this checkout"] = count(args.intents, ROOT, console, args.drain_timeout_s,
                                  args.keep_profile)
    if args.compare:
        console.print(f"counting {args.compare} ...")
        with checkout(args.compare) as path:
            rows[args.compare] = count(args.intents, path, console, args.drain_timeout_s)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intents", type=int, default=INTENTS_DEFAULT)
    parser.add_argument("--compare", metavar="REV", help="also count this git revision")
    parser.add_argument("--drain-timeout-s", type=float, default=DRAIN_TIMEOUT_S)
    parser.add_argument("--keep-profile", type=Path, metavar="FILE",
                        help="copy this checkout's callgrind profile to FILE")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind not found (make bench-instructions installs it)", file=sys.stderr)
        raise SystemExit(3)  # a dependency is missing (README's exit codes)
    if args.compare and subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.compare}^{{commit}}"],
            cwd=ROOT, capture_output=True, check=False).returncode != 0:
        parser.error(f"not a revision of this repository: {args.compare}")
    console = Console(soft_wrap=True)
    try:
        rows = _count_all(args, console)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"bench-instructions failed: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today():%Y-%m-%d}-instructions.json"
    path.write_text(json.dumps(rows, indent=2))
    console.print(table(rows))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
