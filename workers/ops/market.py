"""``betstream market status|suspend|resume|settle MARKET``: a trading desk's market
operations.

``suspend``, ``resume`` and ``settle`` sign a ``suspend_market`` / ``resume_market`` /
``settle_market`` intent (contract v1.1) with a keyring key allowed to sign it, push it
like any producer, and wait for its outcome in the ledger. They are never shed by the
circuit breaker: a suspension is what protects the book while the pipeline is in trouble,
and it waits in the stream, ahead of every later bet, until the writer takes it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Final

from pydantic import ValidationError

from producer.client import Producer
from producer.contract import (
    MarketIntent,
    new_resume_market,
    new_settle_market,
    new_suspend_market,
)
from producer.errors import ConfigError, ContractError
from producer.signing import Keyring
from workers.adapters.ledger_queries import market_status, outcome_of
from workers.adapters.ledger_store import read_ledger
from workers.adapters.redis_connection import redis_client
from workers.settings import Settings

CONFIRM_WAIT_S: Final = 30.0  # default --wait: a running writer commits within a batch
CONFIRM_POLL_S: Final = 0.1
EXIT_OK, EXIT_REJECTED, EXIT_UNAVAILABLE = 0, 1, 3


def run_market(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "status":
        return _print_status(settings, args)
    intent = _intent(args)
    kids = {intent.kind: args.kid} if args.kid else None
    producer = Producer(redis_client(settings.redis_url), Keyring.load(settings.keyring),
                        kids=kids, shed=False)
    producer.submit(intent)
    wait_s = CONFIRM_WAIT_S if args.wait is None else args.wait
    outcome = _wait_for_outcome(settings, intent.id, wait_s)
    if outcome is None:
        print(f"{intent.kind} {intent.id} for market {args.market!r} is in the stream but not "
              f"committed after {wait_s:g} s: is a writer running? (`betstream health`)")
        return EXIT_UNAVAILABLE
    _print(outcome, args.json, f"{intent.kind} {args.market!r}: {outcome['status']}"
           + (f" ({outcome['reason']})" if outcome["reason"] else ""))
    if outcome["status"] != "accepted":
        return EXIT_REJECTED
    if args.action == "settle" and not args.json:
        print("its bets settle in chunks beside other intents; `betstream market status "
              f"{args.market}` shows when it is closed")
    return EXIT_OK


def _intent(args: argparse.Namespace) -> MarketIntent:
    if args.result and args.action != "settle":
        raise ConfigError("--result is for `market settle` only")
    try:
        if args.action == "settle":
            return new_settle_market(args.market, _results(args.result or []), args.others)
        return (new_suspend_market if args.action == "suspend" else new_resume_market)(
            args.market)
    except ValidationError as exc:
        raise ConfigError(f"not a valid {args.action}: {_first_error(exc)}") from None
    except ContractError as exc:
        raise ConfigError(f"not a valid {args.action}: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg']}"


def _results(pairs: list[str]) -> dict[str, str]:
    """``SEL=won`` pairs as results; ConfigError (exit 2) naming a bad one."""
    results: dict[str, str] = {}
    for pair in pairs:
        selection, sep, result = pair.rpartition("=")
        if not sep or not selection or result not in ("won", "lost", "void"):
            raise ConfigError(f"--result {pair!r}: expected SELECTION=won|lost|void")
        results[selection] = result
    if not results:
        raise ConfigError("market settle needs at least one --result SELECTION=won|lost|void")
    return results


def _print_status(settings: Settings, args: argparse.Namespace) -> int:
    status = read_ledger(settings.db, settings.sqlite_busy_timeout_ms,
                         lambda conn: market_status(conn, args.market))
    if status is None:
        print(f"the ledger {settings.db} cannot be read (not created yet?)")
        return EXIT_UNAVAILABLE
    since = f" since outcome seq {status['since_seq']}" if status["since_seq"] else ""
    _print(status, args.json, f"market {args.market!r}: {status['state']}{since}; "
           f"{status['open_bets']:,} open bets, stakes {status['open_stakes']:,} (minor units)")
    return EXIT_OK


def _wait_for_outcome(settings: Settings, intent_id: str, wait_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + wait_s
    while True:
        outcome = read_ledger(settings.db, settings.sqlite_busy_timeout_ms,
                              lambda conn: outcome_of(conn, intent_id))
        if outcome is not None or time.monotonic() >= deadline:
            return outcome
        time.sleep(CONFIRM_POLL_S)


def _print(record: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(record) if as_json else text)
