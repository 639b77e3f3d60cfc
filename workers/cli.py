"""``betstream``: one command for every process and operator task.

Operators get a clear message and an exit code, never a traceback, for expected faults:
0 success, 1 a check failed (audit), 2 bad settings or usage, 3 a dependency is unreachable.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from producer.errors import BetstreamError, ConfigError
from workers.logs import configure_logging, get_logger
from workers.settings import Settings, load_settings
from workers.writer.gc_tuning import tune_runtime

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PRIVATE_UMASK = 0o077  # files 0600, directories 0700: nothing for group or others


def stop_on_signals() -> threading.Event:
    """SIGTERM / SIGINT ask for a clean stop: the current batch finishes, the lease is freed."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def ignore_sighup() -> None:
    """Only the writer reloads on SIGHUP (its keyring). The confirmer has nothing to re-read
    and the demo gateway reads the keyring per request, so a ``kill -HUP`` sent to every
    betstream process must not stop them (the default action terminates)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def cmd_writer(settings: Settings, args: argparse.Namespace) -> int:
    from workers.adapters.breaker_store import BreakerStore
    from workers.adapters.ledger_store import Store
    from workers.adapters.metrics_store import Recorder
    from workers.adapters.redis_connection import redis_client
    from workers.writer.batch_writer import Writer, consumer_name
    from workers.writer.breaker_hook import BreakerHook
    from workers.writer.hooks import HealthBeacon, Hooks, MetricsHook, ProgressLog
    from workers.writer.keyring_reload import KeyringReloader, describe

    keyring = KeyringReloader(settings.keyring, get_logger("betstream.keyring"))
    signal.signal(signal.SIGHUP, keyring.request)  # re-read the keyring, no restart
    client = redis_client(settings.redis_url)
    consumer = args.consumer or consumer_name()
    hooks = Hooks(ProgressLog(settings.progress_interval_s),
                  HealthBeacon(client, consumer, settings.health_ttl_ms),
                  MetricsHook(Recorder(client, settings.metrics_flush_interval_s)),
                  BreakerHook(BreakerStore(client, settings.breaker_limits,
                                           settings.breaker_record_path),
                              settings.breaker_sync_ms / 1000))
    get_logger("betstream.writer").info(
        "writer.start", consumer=consumer, db=str(settings.db),
        batch_size_max=settings.batch_size_max, **describe(keyring.current()))
    writer = Writer(settings, client,
                    lambda: Store(settings.db, settings.sqlite_busy_timeout_ms,
                                  listing=settings.listing),
                    keyring.current, hooks, consumer)
    tune_runtime(settings.writer_gc_gen0_threshold, settings.writer_switch_interval_us)
    writer.run(stop_on_signals())
    writer.close()
    get_logger("betstream.writer").info("writer.stopped", consumer=consumer)
    return EXIT_OK


def cmd_confirmer(settings: Settings, args: argparse.Namespace) -> int:
    from workers.adapters.redis_connection import redis_client
    from workers.confirmer.ledger_tail import run_confirmer

    ignore_sighup()
    log = get_logger("betstream.confirmer")
    log.info("confirmer.start", db=str(settings.db),
             progress_file=str(settings.confirm_progress_path))
    run_confirmer(settings, redis_client(settings.redis_url), stop_on_signals())
    log.info("confirmer.stopped")
    return EXIT_OK


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> int:
    from workers.gateway.app import create_apps
    from workers.gateway.server import Listener, serve

    host = args.host or settings.gateway_host
    port = settings.gateway_port if args.port is None else args.port
    if args.demo and host not in LOOPBACK_HOSTS:
        raise ConfigError("--demo hands out tokens for any user and bets with the server's "
                          "keys: it only listens on loopback (127.0.0.1)")
    ignore_sighup()
    operator = Listener(args.ops_host or settings.gateway_ops_host,
                        settings.gateway_ops_port if args.ops_port is None else args.ops_port)
    serve(settings, create_apps(settings, demo=args.demo), Listener(host, port), operator,
          args.demo)
    return EXIT_OK


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from workers.adapters import subscriber_tokens as tokens
    bad = [u for u in args.user_ids if u <= 0]
    if bad:
        raise ConfigError(f"USER_ID must be a positive integer (got {bad[0]})")
    secret = tokens.load_or_create_secret(settings.gateway_secret_file)
    ttl_s = args.ttl or settings.token_ttl_s
    sys.stdout.write("".join(f"{tokens.issue(secret, u, ttl_s)}\n" for u in args.user_ids))
    return EXIT_OK


def cmd_breaker(settings: Settings, args: argparse.Namespace) -> int:
    from producer.breaker_state import CLOSED, OPEN
    from producer.contract import now_ms
    from workers.adapters.breaker_store import BreakerStore
    from workers.adapters.redis_connection import redis_client

    store = BreakerStore(redis_client(settings.redis_url), settings.breaker_limits,
                         settings.breaker_record_path)
    if args.action in ("open", "close"):
        if not args.reason:
            raise ConfigError("--reason is required: forcing the breaker is recorded")
        try:
            store.force(OPEN if args.action == "open" else CLOSED, args.reason)
        except OSError as exc:
            raise ConfigError(f"cannot record the forced breaker at "
                              f"{settings.breaker_record_path}: {exc.strerror}") from None
    snap = store.load()
    b = snap.breaker
    in_state_s = (now_ms() - b.since_ms) / 1000 if b.since_ms else 0.0
    report = {"state": b.state, "reason": b.reason, "in_state_s": round(in_state_s, 1),
              "forced": b.forced, "opened_total": b.opened,
              "recent_transitions": store.transitions(5)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"breaker {b.state.upper()}{' (forced)' if b.forced else ''} for "
              f"{in_state_s:.1f}s: {b.reason or 'no trips yet'}")
        for t in report["recent_transitions"]:
            print(f"  -> {t['state']:<9} at {t['since_ms']}  {t['reason']}")
    return EXIT_OK


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from workers.adapters.ledger_backup import backup

    source = args.db or settings.db
    with Progress(transient=True) as bar:
        task = bar.add_task("backing up", total=None)
        pages = backup(source, args.dest, settings.sqlite_busy_timeout_ms,
                       lambda done, total: bar.update(task, completed=done, total=total))
    print(f"backed up {source} to {args.dest} ({pages} pages); check it with "
          f"betstream audit --db {args.dest}")
    return EXIT_OK


def utc_date_ms(text: str, option: str) -> int:
    """A UTC date (or date and time) given on the command line, as ms since the epoch."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: use a date like 2026-11-01") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def cmd_statement(settings: Settings, args: argparse.Namespace) -> int:
    from workers.ops.statement import run_statement

    ok = run_statement(settings, args, utc_date_ms(args.since, "--since") if args.since else 0)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_market(settings: Settings, args: argparse.Namespace) -> int:
    from workers.ops.market import run_market

    return run_market(settings, args)


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from workers.ops.audit import run_audit

    return EXIT_OK if run_audit(settings, args) else EXIT_FAILED


def cmd_archive(settings: Settings, args: argparse.Namespace) -> int:
    from workers.ops.archive import run_archive_command

    return run_archive_command(settings, args, utc_date_ms(args.before, "--before"))


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    from workers.settings import settings_reference

    print(settings_reference(), end="")
    return EXIT_OK


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    from workers.adapters.confirmer_health import confirmer_health
    from workers.adapters.redis_connection import redis_client
    from workers.adapters.writer_health import writer_health

    client = redis_client(settings.redis_url)
    health = writer_health(client)
    confirmer = confirmer_health(client, settings.db, settings.sqlite_busy_timeout_ms,
                                 settings.confirm_lag_max_ms, time.time_ns() // 10**6)
    healthy = health.ok and not health.degraded and confirmer.ok
    if args.json:
        print(json.dumps({**health.as_dict(), "confirmer": confirmer.as_dict(),
                          "ok": healthy}))
    else:
        _print_health(health, confirmer)
    return EXIT_OK if healthy else EXIT_FAILED


def _print_health(health, confirmer) -> None:  # (WriterHealth, ConfirmerHealth)
    print(f"writer lease: {health.lease_holder or 'nobody'}")
    for name, beacon in sorted(health.writers.items()):
        fault = f" last fault: {beacon['last_fault']}" if beacon.get("last_fault") else ""
        print(f"  {name}: {beacon.get('state')} epoch={beacon.get('epoch')} "
              f"committed={beacon.get('committed')}{fault}")
        if int(beacon.get("redis_data_lost_ms") or 0):
            print(f"  {name} found Redis without its data (last committed seq "
                  f"{beacon.get('redis_data_lost_seq')}): run `betstream reconcile`")
    print(f"backlog: pending={health.pending} undelivered={health.lag}")
    print(f"breaker: {health.breaker} {health.breaker_reason}".rstrip())
    print(f"confirmer: committed seq={confirmer.committed_seq} published seq="
          f"{confirmer.published_seq} oldest unpublished waited {confirmer.waiting_ms} ms")
    print("UNHEALTHY: no writer is leading" if not health.ok else
          f"UNHEALTHY: breaker {health.breaker}" if health.degraded else
          "UNHEALTHY: the ledger cannot be read" if confirmer.committed_seq is None else
          f"UNHEALTHY: an outcome has waited over {confirmer.lag_max_ms} ms unpublished"
          if not confirmer.ok else "healthy")


def cmd_load(settings: Settings, args: argparse.Namespace) -> int:
    from workers.ops.load import run_load_command

    return run_load_command(settings, args)


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from workers.adapters.redis_connection import redis_client
    from workers.ops.reconcile import run_reconcile

    client = None if args.offline else redis_client(settings.redis_url)
    return run_reconcile(args.db or settings.db, settings.sqlite_busy_timeout_ms, client, args,
                         settings.archive_path)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from workers.ops.demo_run import run_demo

    return run_demo(settings, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="betstream", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_processes, _add_operations, _add_ledger_commands, _add_load_and_demo):
        add(sub)
    return p


def _add_processes(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("writer", help="run the single batching writer")
    w.add_argument("--consumer", help="consumer name (default writer-<host>-<pid>)")
    w.set_defaults(func=cmd_writer)
    cf = sub.add_parser("confirmer", help="run the confirmer: publishes every committed outcome from the ledger")
    cf.set_defaults(func=cmd_confirmer)
    g = sub.add_parser("gateway", help="WebSocket confirmations, /bets, /health; "
                                        "/metrics on the operator listener")
    g.add_argument("--host", default=None, help="default BETSTREAM_GATEWAY_HOST (127.0.0.1)")
    g.add_argument("--port", type=int, default=None, help="default BETSTREAM_GATEWAY_PORT (8000)")
    g.add_argument("--ops-host", default=None,
                   help="operator listener (/metrics, detailed /health); default "
                        "BETSTREAM_GATEWAY_OPS_HOST (127.0.0.1)")
    g.add_argument("--ops-port", type=int, default=None,
                   help="default BETSTREAM_GATEWAY_OPS_PORT (9101)")
    g.add_argument("--demo", action="store_true", help="serve the demo bet slip at /")
    g.set_defaults(func=cmd_gateway)


def _add_ledger_commands(sub: argparse._SubParsersAction) -> None:
    bk = sub.add_parser("backup", help="online consistent copy of the ledger")
    bk.add_argument("dest", help="new file to write the copy to")
    bk.add_argument("--db", help="database file (default BETSTREAM_DB)")
    bk.set_defaults(func=cmd_backup)
    sm = sub.add_parser("statement", help="every ledger entry of an account, running balance")
    sm.add_argument("user_id", type=int, metavar="USER_ID")
    sm.add_argument("--since", help="first day to list (YYYY-MM-DD, UTC); earlier entries "
                                    "make up the opening balance")
    sm.add_argument("--db", help="database file (default BETSTREAM_DB)")
    sm.add_argument("--json", action="store_true")
    sm.add_argument("--archive-dir", type=Path, help="default BETSTREAM_ARCHIVE_DIR")
    sm.add_argument("--live-only", action="store_true",
                    help="skip the archives (archived entries show as one carried-forward row)")
    sm.set_defaults(func=cmd_statement)
    a = sub.add_parser("audit", help="prove the ledger invariants; exit 1 on any violation")
    a.add_argument("--db", help="database file (default BETSTREAM_DB)")
    a.add_argument("--json", action="store_true", help="machine-readable report")
    a.add_argument("--with-archives", action="store_true",
                   help="prove the whole history: the archive files and the live ledger")
    a.add_argument("--archive-dir", type=Path, help="default BETSTREAM_ARCHIVE_DIR")
    a.set_defaults(func=cmd_audit)
    ar = sub.add_parser("archive", help="move settled history before DATE to monthly files")
    ar.add_argument("--before", required=True, help="cutoff (YYYY-MM-DD or ISO time, UTC)")
    ar.add_argument("--db", help="database file (default BETSTREAM_DB)")
    ar.add_argument("--archive-dir", type=Path, help="default BETSTREAM_ARCHIVE_DIR")
    ar.add_argument("--json", action="store_true", help="print a JSON summary")
    ar.add_argument("--quiet", action="store_true", help="no progress bar")
    ar.set_defaults(func=cmd_archive)


def _add_operations(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("token", help="print a subscriber token per USER_ID, one per line, "
                                     "in order")
    t.add_argument("user_ids", type=int, nargs="+", metavar="USER_ID")
    t.add_argument("--ttl", type=int, default=None, help="seconds (default BETSTREAM_TOKEN_TTL_S)")
    t.set_defaults(func=cmd_token)
    b = sub.add_parser("breaker", help="show or force the circuit breaker")
    b.add_argument("action", choices=["status", "open", "close"], nargs="?", default="status")
    b.add_argument("--reason", help="why (required to force; recorded in the transition log)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_breaker)
    mk = sub.add_parser("market", help="a market's state and open bets, or suspend, resume "
                                       "or settle it (signed with a keyring key; waits for "
                                       "the outcome)")
    mk.add_argument("action", choices=["status", "suspend", "resume", "settle"])
    mk.add_argument("market", metavar="MARKET")
    mk.add_argument("--result", action="append", metavar="SEL=RESULT",
                    help="settle: a selection's result, won|lost|void (repeat)")
    mk.add_argument("--others", choices=["lost", "void"], default="lost",
                    help="settle: the result of every selection not named (default lost)")
    mk.add_argument("--kid", help="the keyring key to sign with (default: the first allowed)")
    mk.add_argument("--wait", type=float, default=None, metavar="S",
                    help="seconds to wait for the outcome (default 30)")
    mk.add_argument("--json", action="store_true")
    mk.set_defaults(func=cmd_market)
    st = sub.add_parser("settings", help="print every BETSTREAM_* setting with its default "
                                         "and meaning (docs/settings.md)")
    st.set_defaults(func=cmd_settings)
    h = sub.add_parser("health", help="writer lease, beacons, backlog and breaker; exit 1 if "
                                      "no writer leads or the breaker is not closed")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_health)
    rc = sub.add_parser("reconcile", help="producer journals against the ledger: exit 1 if "
                                          "an acknowledged intent has no outcome")
    rc.add_argument("--journal", action="append", required=True, metavar="PATH",
                    help="a journal written by load --journal (repeat for several producers)")
    rc.add_argument("--db", help="database file (default BETSTREAM_DB)")
    rc.add_argument("--wait", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the writer to drain the stream")
    rc.add_argument("--offline", action="store_true",
                    help="do not ask Redis (no drain check, no dead letters)")
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=cmd_reconcile)


def _add_load_and_demo(sub: argparse._SubParsersAction) -> None:
    ld = sub.add_parser("load", help="push signed demo intents at a given rate")
    ld.add_argument("--users", type=int, default=100)
    ld.add_argument("--bets", type=int, default=10_000)
    ld.add_argument("--rate", type=float, default=0.0, help="intents/s (0 = unlimited)")
    ld.add_argument("--user-first", type=int, default=1, help="first user id")
    ld.add_argument("--deposit", type=int, default=100_000, help="minor units per user")
    ld.add_argument("--withdrawals", type=float, default=0.0, help="share of withdrawals")
    ld.add_argument("--settles", type=float, default=0.0,
                    help="share of settlements of the load's own recent bets")
    ld.add_argument("--duplicates", type=float, default=0.0, help="share of re-sent intents")
    ld.add_argument("--seed", type=int, default=None)
    ld.add_argument("--markets", type=int, default=0, metavar="N",
                    help="spread bets over N markets of this load, suspend and resume some on "
                         "the way, result them all at the end (needs a key for market kinds)")
    ld.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    ld.add_argument("--quiet", action="store_true", help="no progress bar")
    ld.add_argument("--journal", help="append one line per acknowledged XADD to this file "
                                      "(for betstream reconcile)")
    ld.add_argument("--redis-wait", type=float, default=None, metavar="S",
                    help="ride out a Redis outage this long, re-sending the chunk (default 60)")
    ld.set_defaults(func=cmd_load)
    r = sub.add_parser("run", help="start a private pipeline with demo data (make run)")
    r.add_argument("--users", type=int, default=50)
    r.add_argument("--bets", type=int, default=20_000)
    r.add_argument("--rate", type=float, default=0.0)
    r.add_argument("--exit-after-demo", action="store_true", help="stop once the demo is done")
    r.set_defaults(func=cmd_run)


def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.enable()  # a fatal signal (SIGBUS, SIGSEGV) leaves a traceback in the log
    # Every file betstream creates is private to its owner: the ledger, its WAL and SHM
    # (SQLite gives them the database file's mode), backups, archives, progress and breaker
    # records, secrets, logs. Set before any command runs, so no file is ever created 0644.
    os.umask(PRIVATE_UMASK)
    args = build_parser().parse_args(argv)
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        return func(settings, args)
    except ConfigError as exc:
        print(f"betstream {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"betstream {args.command}: Redis unreachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BetstreamError as exc:
        print(f"betstream {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `betstream statement 7 | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
