"""``betstream statement USER_ID``: one account's ledger rows with a running balance,
checked against the account's snapshot (archives included unless ``--live-only``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from workers.adapters.ledger_statement import Statement, statement
from workers.settings import Settings


def run_statement(settings: Settings, args: argparse.Namespace, since_ms: int) -> bool:
    """Print the statement; True when the ledger's rows end at the account's balance."""
    archive_dir = None if args.live_only else (args.archive_dir or settings.archive_path)
    st = statement(args.db or settings.db, args.user_id, since_ms,
                   settings.sqlite_busy_timeout_ms, archive_dir)
    if args.json:
        print(json.dumps(st.as_dict()))
    else:
        _print_statement(st)
    return st.consistent


def _print_statement(st: Statement) -> None:
    print(f"statement of account {st.user_id}   (amounts in minor units)")
    if st.archives:
        print(f"including archives: {', '.join(st.archives)}")
    print(f"{'entry':>8}  {'when (UTC)':<19}  {'what':<10}  {'reference':<36}  "
          f"{'amount':>12}  {'balance':>12}")
    print(f"{'':>8}  {'':<19}  {'opening':<10}  {'':<36}  {'':>12}  {st.opening:>12}")
    for ln in st.lines:
        when = dt.datetime.fromtimestamp(ln.at_ms / 1000, dt.timezone.utc)
        print(f"{ln.entry_id:>8}  {when.strftime('%Y-%m-%d %H:%M:%S'):<19}  "
              f"{ln.ref_type:<10}  {ln.ref_id:<36}  {ln.amount:>12}  {ln.balance:>12}")
    for hold in st.holds:
        due = (" due " + dt.datetime.fromtimestamp(hold["expires_at"] / 1000, dt.timezone.utc)
               .strftime("%Y-%m-%d %H:%M:%S") if hold["expires_at"] else "")
        print(f"withdrawal hold {hold['id']}  {hold['amount']:>12}  {hold['state']}{due}")
    verdict = "matches" if st.consistent else "DOES NOT MATCH"
    print(f"closing balance {st.closing}; account snapshot {st.snapshot}: {verdict}")
