"""An independent model of the ledger, replayed from the intents stream in stream order.

Written without any of betstream's own decision code: plain dict arithmetic over the
entries as Redis holds them, so a bug in the writer cannot hide in a shared helper.
Settlements pay as docs/ledger.md says (won: floor(stake x odds), lost: nothing, void: the
stake back), computed here with ``Decimal`` rather than betstream's integer odds helper.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import redis

STREAM = "betstream:intents"


@dataclass
class ModelBet:
    user: int
    stake: int
    odds: str
    status: str = "open"


@dataclass
class Model:
    balances: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)  # id -> accepted | reason
    bets: dict[str, ModelBet] = field(default_factory=dict)  # accepted bets by bet id
    bodies: dict[str, bytes] = field(default_factory=dict)  # id -> the first body's bytes
    conflicts: Counter[str] = field(default_factory=Counter)  # id -> id_conflict entries
    entries: int = 0
    resent: int = 0

    def apply_entry(self, raw: bytes) -> None:
        """One stream entry: a re-send of a known id, a conflicting body, or a new intent."""
        body = json.loads(raw)
        first = self.bodies.get(body["id"])
        if first is not None:
            if first == raw:
                self.resent += 1
            else:
                self.conflicts[body["id"]] += 1
            return
        self.bodies[body["id"]] = raw
        self.apply(body)

    def apply(self, body: dict) -> None:
        if body["id"] in self.outcomes:
            self.resent += 1
            return
        user, kind, amount = body["user_id"], body["kind"], body.get("amount", 0)
        if kind == "settle":
            verdict = self._settle(body)
        elif kind == "deposit":
            self.balances[user] = self.balances.get(user, 0) + amount
            verdict = "accepted"
        elif user not in self.balances:
            verdict = "unknown_user"
        elif self.balances[user] < amount:
            verdict = "insufficient_funds"
        else:
            self.balances[user] -= amount
            verdict = "accepted"
            if kind == "bet":
                self.bets[body["id"]] = ModelBet(user, amount, body["odds"])
        self.outcomes[body["id"]] = verdict

    def _settle(self, body: dict) -> str:
        bet = self.bets.get(body["bet_id"])
        if bet is None or bet.user != body["user_id"]:
            return "unknown_bet"
        if bet.status != "open":
            return "already_settled"
        bet.status = body["outcome"]
        if bet.status == "won":
            self.balances[bet.user] += int(Decimal(bet.stake) * Decimal(bet.odds))  # floor: > 0
        elif bet.status == "void":
            self.balances[bet.user] += bet.stake
        return "accepted"

    @property
    def settled(self) -> Counter[str]:
        """Accepted bets by their state now: open, won, lost, void."""
        return Counter(bet.status for bet in self.bets.values())


def replay(client: redis.Redis, secrets: dict[str, bytes]) -> Model:
    model = Model()
    last = "-"
    while True:
        page = client.xrange(STREAM, min=last, count=5000)
        page = [e for e in page if e[0].decode() != last]
        if not page:
            return model
        for entry_id, fields in page:
            model.entries += 1
            kid = fields[b"kid"].decode()
            expected = hmac.new(secrets[kid], fields[b"body"], hashlib.sha256).hexdigest()
            assert fields[b"sig"].decode() == expected, "the load generator signs correctly"
            model.apply_entry(fields[b"body"])
        last = page[-1][0].decode()
