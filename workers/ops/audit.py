"""``betstream audit``: every ledger invariant checked on a file (with its archives on
``--with-archives``), as a report or as JSON for monitoring."""

from __future__ import annotations

import argparse
import dataclasses
import json

from workers.adapters.ledger_archive_audit import audit_with_archives
from workers.adapters.ledger_audit import audit
from workers.settings import Settings


def run_audit(settings: Settings, args: argparse.Namespace) -> bool:
    """Print the checks; True when every invariant holds."""
    path = args.db or settings.db
    if args.with_archives:
        checks = audit_with_archives(path, args.archive_dir or settings.archive_path,
                                     settings.sqlite_busy_timeout_ms)
    else:
        checks = audit(path, settings.sqlite_busy_timeout_ms)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"db": str(path), "ok": ok,
                          "checks": [dataclasses.asdict(c) for c in checks]}))
        return ok
    print(f"audit of {path}")
    for c in checks:
        print(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    print("all invariants hold" if ok else "INVARIANTS VIOLATED")
    return ok
