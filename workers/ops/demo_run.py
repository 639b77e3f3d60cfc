"""``betstream run`` (behind ``make run``): the whole pipeline on one machine, with demo data.

Finds or starts Redis, creates a demo keyring, starts the writer as a child process, pushes
a demo load with a progress bar, waits until every intent is committed, prints a summary,
and keeps running until Ctrl-C, when it stops its children cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final
from urllib.parse import urlparse

import redis
from rich.console import Console

from producer.client import Producer
from producer.contract import MARKET_KINDS
from producer.load import LoadPlan, LoadResult
from producer.signing import Keyring
from workers.adapters.ledger_queries import outcome_counts_after, outcome_seq_max
from workers.adapters.ledger_store import read_only_uri
from workers.adapters.redis_connection import redis_client
from workers.ops.load import push_with_progress
from workers.settings import Settings

VAR: Final = Path("var")
START_TIMEOUT_S: Final = 20.0
DRAIN_TIMEOUT_S: Final = 600.0
STOP_TIMEOUT_S: Final = 15.0
CHILD_POLL_S: Final = 0.5
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
DEMO_KEYS: Final = {"frontend": ["bet"], "cashier": ["deposit", "withdrawal"],
                    "settlement": ["settle"],
                    "trading": ["suspend_market", "resume_market", "settle_market"],
                    "payments": ["withdrawal_hold", "withdrawal_post", "withdrawal_void"]}
DEMO_MARKETS: Final = 3  # each suspended and resumed on the way, resulted at the end
PROCESSES: Final = (("writer",), ("confirmer",), ("gateway", "--demo"))  # as in the Procfile
# Every intent leaves a nonce key that expires after nonce_ttl_s. At Redis's default effort
# (1) expiry fell behind at 30,000 intents/s: 4.2M keys instead of ~2.7M, and the keyspace
# doubled again, slowing every SET for ~25 s (docs/performance.md). Also in
# compose.yaml and the benchmark's Redis.
REDIS_SERVER_TUNING: Final = ("--active-expire-effort", "10")
KEYRING_FILE_MODE: Final = 0o600


def ensure_keyring(path: Path, console: Console) -> None:
    """A demo keyring with fresh random secrets, readable only by its owner; a file already
    at ``path`` is kept as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ring = {kid: {"secret": secrets.token_urlsafe(32), "kinds": kinds}
            for kid, kinds in DEMO_KEYS.items()}
    try:  # owner-only from the first byte, whatever the umask
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEYRING_FILE_MODE)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(ring, indent=2))
    console.print(f"created demo keyring [bold]{path}[/] (keys: {', '.join(ring)})")


def ensure_redis(url: str, console: Console) -> subprocess.Popen | None:
    """Use the Redis at ``url`` if it answers, else start a private one under ./var."""
    if _pings(url):
        console.print(f"using Redis at [bold]{url}[/]")
        return None
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"Redis at {url} does not answer, and it is not local to start it")
    rdir = VAR / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(parsed.port or 6379), "--bind", "127.0.0.1",
         "--dir", str(rdir.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
         "--logfile", str((rdir / "redis.log").resolve()), *REDIS_SERVER_TUNING],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        process_group=0)  # stopped by us, after the processes that use it
    _wait(lambda: _pings(url), START_TIMEOUT_S, "the private redis-server to answer")
    console.print(f"started a private redis-server at [bold]{url}[/] (data in {rdir})")
    return proc


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def start_processes(logdir: Path) -> dict[str, subprocess.Popen]:
    logdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for args in PROCESSES:
        log = open(logdir / f"{args[0]}.log", "ab")
        # Each in a process group of its own: a Ctrl-C (SIGINT to the terminal's group)
        # reaches only us, and we stop the children in order, each exactly once.
        out[args[0]] = subprocess.Popen([sys.executable, "-m", "workers.cli", *args],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        env={**os.environ, "BETSTREAM_LOG_FORMAT": "json"},
                                        process_group=0)
    return out


def max_seq(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(read_only_uri(db), uri=True)
    try:
        return outcome_seq_max(conn)
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def summary(db: Path, after_seq: int) -> list[tuple[str, str | None, int]]:
    conn = sqlite3.connect(read_only_uri(db), uri=True)
    try:
        return outcome_counts_after(conn, after_seq)
    finally:
        conn.close()


def wait_committed(client: redis.Redis, total: int, console: Console,
                   children: dict[str, subprocess.Popen]) -> None:
    """Progress bar until the writer has committed and acknowledged everything."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from workers.adapters.intent_stream import backlog

    with Progress(TextColumn("committing"), BarColumn(), MofNCompleteColumn(),
                  console=console) as bar:
        task = bar.add_task("commit", total=total)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            state = backlog(client)
            left = sum(state) if state else total
            bar.update(task, completed=max(0, total - left))
            if state == (0, 0):
                return
            dead = [name for name, p in children.items() if p.poll() is not None]
            if dead:
                raise SystemExit(f"{', '.join(dead)} exited; see var/log/{dead[0]}.log")
            time.sleep(0.1)
    raise SystemExit("the writer did not drain the demo load in time; see var/log/writer.log")


def wait_writer_leading(client: redis.Redis, children: dict[str, subprocess.Popen]) -> None:
    """Push nothing until the writer leads; if a process dies first, say where to look."""
    from workers.adapters.writer_health import writer_health

    deadline = time.monotonic() + START_TIMEOUT_S
    while not writer_health(client).ok:
        dead = [name for name, p in children.items() if p.poll() is not None]
        if dead:
            raise SystemExit(f"{', '.join(dead)} exited; see var/log/{dead[0]}.log")
        if time.monotonic() > deadline:
            raise SystemExit("the writer did not start leading; see var/log/writer.log")
        time.sleep(0.1)


def print_summary(console: Console, db: Path, after_seq: int, seconds: float,
                  pushed: LoadResult) -> None:
    rows = summary(db, after_seq)
    total = sum(n for _, _, n in rows)
    accepted = sum(n for status, _, n in rows if status == "accepted")
    console.print(f"\n[bold]demo done[/]: {total:,} intents committed in {seconds:.1f}s "
                  f"([bold]{total / seconds:,.0f} intents/s[/] end to end, durable)")
    if pushed.duplicates:
        console.print(f"  the {pushed.sent:,} stream entries pushed are these {total:,} intents "
                      f"and {pushed.duplicates:,} copies of them re-sent, as a client that "
                      "retries would: a copy gets its intent's outcome back and moves no money")
    console.print(f"  accepted  {accepted:>7,}")
    for status, reason, n in rows:
        if status == "rejected":
            console.print(f"  rejected  {n:>7,}  {reason}")
    console.print(f"\nledger      {db.resolve()}  (check it: .venv/bin/betstream audit)")
    console.print(f"logs        {(VAR / 'log').resolve()}/{{writer,confirmer,gateway}}.log")


def print_gateway(console: Console, settings: Settings) -> None:
    """Where to look: the bet slip page, a token, health and metrics."""
    from workers.adapters import subscriber_tokens as tokens
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    _wait(lambda: _answers(base + "/health"), START_TIMEOUT_S, "the gateway to answer")
    token = tokens.issue(tokens.load_or_create_secret(settings.gateway_secret_file), 1,
                         settings.token_ttl_s)
    console.print(f"bet slip    [bold]{base}/[/]  (demo users 1-5)")
    ops = f"http://{settings.gateway_ops_host}:{settings.gateway_ops_port}"
    console.print(f"health      {ops}/health    metrics {ops}/metrics  (operator listener)")
    console.print(f"token (user 1, {settings.token_ttl_s}s)  {token}")
    console.print(f"websocket   ws://{settings.gateway_host}:{settings.gateway_port}/ws?since=0  "
                  "(token: header `Authorization: Bearer …`, or first message "
                  '{"token": "…"})')


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the demo ends or is stopped (Ctrl-C, SIGINT, SIGTERM); 1 when a process
    died on its own (SystemExit says which and where its log is)."""
    console = Console(stderr=False, soft_wrap=True)  # never break a token across lines
    _interrupt_on_stop_signals()
    redis_proc, children = None, {}
    try:
        redis_proc = ensure_redis(settings.redis_url, console)
        ensure_keyring(settings.keyring, console)
        children = start_processes(VAR / "log")
        _demo(settings, args, console, children)
    except KeyboardInterrupt:
        console.print("\nstopping ...")
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C must not cut the orderly stop short
            signal.signal(sig, signal.SIG_IGN)
        stopped = stop_children(list(children.values()))
        stopped = stop_children([redis_proc] if redis_proc else []) or stopped  # Redis last
    if stopped:
        console.print(f"stopped {', '.join(children)}" + (" and redis-server" if redis_proc
                                                          else ""))
    return 0


def _demo(settings: Settings, args: argparse.Namespace, console: Console,
          children: dict[str, subprocess.Popen]) -> None:
    client = redis_client(settings.redis_url)
    wait_writer_leading(client, children)
    keyring = Keyring.load(settings.keyring)
    producer = Producer(client, keyring)
    after = max_seq(settings.db)
    markets = DEMO_MARKETS if all(keyring.kids_for(kind) for kind in MARKET_KINDS) else 0
    if not markets:
        console.print(f"{settings.keyring} has no key for market kinds: the demo's markets "
                      "are never suspended nor resulted (a new demo keyring has one)")
    plan = LoadPlan(users=args.users, bets=args.bets, rate=args.rate, deposit=1_000_000,
                    stake_max=2_000, withdrawal_share=0.02, duplicate_share=0.01,
                    markets=markets)
    started = time.perf_counter()
    result = push_with_progress(producer, plan, quiet=False)
    wait_committed(client, result.sent, console, children)
    print_summary(console, settings.db, after, time.perf_counter() - started, result)
    print_gateway(console, settings)
    if not args.exit_after_demo:
        console.print("\nrunning; push more with [bold].venv/bin/betstream load[/]. "
                      "Ctrl-C stops.")
        _wait_for_interrupt(children)


def _interrupt_on_stop_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt here, even where SIGINT came ignored (a
    script's background job): every way of stopping us then stops the children in order."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler)


def _wait_for_interrupt(children: dict[str, subprocess.Popen]) -> None:
    while all(p.poll() is None for p in children.values()):
        time.sleep(CHILD_POLL_S)
    dead = [n for n, p in children.items() if p.poll() is not None]
    raise SystemExit(f"{', '.join(dead)} exited; see var/log/")


def stop_children(procs: list[subprocess.Popen]) -> bool:
    """SIGTERM (each finishes its batch and frees its lease), SIGKILL only past the timeout.
    True if any was still running."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return bool(running)
