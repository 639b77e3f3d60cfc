"""``betstream load``: the load generator as a command, with a progress bar."""

from __future__ import annotations

import argparse
import json

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from producer.client import Producer
from producer.journal import Journal, JournaledProducer
from producer.load import (
    REDIS_WAIT_S_DEFAULT,
    LoadPlan,
    LoadResult,
    market_intents,
    run_load,
)
from producer.signing import Keyring
from workers.adapters.redis_connection import redis_client
from workers.settings import Settings


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    return LoadPlan(users=args.users, bets=args.bets, rate=args.rate, user_first=args.user_first,
                    deposit=args.deposit, withdrawal_share=args.withdrawals,
                    settle_share=args.settles,
                    duplicate_share=args.duplicates, seed=args.seed, markets=args.markets)


def push_with_progress(producer: Producer, plan: LoadPlan, quiet: bool,
                       redis_wait_s: float = REDIS_WAIT_S_DEFAULT) -> LoadResult:
    if quiet:
        return run_load(producer, plan, redis_wait_s=redis_wait_s)
    columns = (TextColumn("pushing intents"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("load", total=plan.users + plan.bets + market_intents(plan))
        return run_load(producer, plan, lambda sent, _total: bar.update(task, completed=sent),
                        redis_wait_s)


def run_load_command(settings: Settings, args: argparse.Namespace) -> int:
    producer = Producer(redis_client(settings.redis_url), Keyring.load(settings.keyring))
    journal = Journal(args.journal) if args.journal else None
    try:
        result = push_with_progress(JournaledProducer(producer, journal) if journal else producer,
                                    plan_from_args(args), args.quiet,
                                    REDIS_WAIT_S_DEFAULT if args.redis_wait is None
                                    else args.redis_wait)
    finally:
        if journal:
            journal.close()
    summary = {"sent": result.sent, "duplicates": result.duplicates, "by_kind": result.by_kind,
               "seconds": round(result.seconds, 3), "per_s": round(result.per_s),
               "shed": result.shed, "shed_wait_s": round(result.shed_wait_s, 1),
               "redis_retries": result.redis_retries,
               "redis_wait_s": round(result.redis_wait_s, 1)}
    shed = (f"; breaker shed {result.shed} (waited {result.shed_wait_s:.1f}s)"
            if result.shed else "")
    if result.redis_retries:
        shed += (f"; Redis unreachable: {result.redis_retries} chunks re-sent "
                 f"(waited {result.redis_wait_s:.1f}s)")
    print(json.dumps(summary) if args.json else
          f"sent {result.sent} intents in {result.seconds:.1f}s ({result.per_s:,.0f}/s){shed}")
    return 0
