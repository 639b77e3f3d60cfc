"""An independent model of the ledger, replayed from the intents stream in stream order.

Written without any of betstream's own decision code: plain dict arithmetic over the
entries as Redis holds them, so a bug in the writer cannot hide in a shared helper.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field

import redis

STREAM = "betstream:intents"


@dataclass
class Model:
    balances: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)  # id -> accepted | reason
    entries: int = 0
    resent: int = 0

    def apply(self, body: dict) -> None:
        if body["id"] in self.outcomes:
            self.resent += 1
            return
        user, kind, amount = body["user_id"], body["kind"], body.get("amount", 0)
        if kind == "deposit":
            self.balances[user] = self.balances.get(user, 0) + amount
            verdict = "accepted"
        elif user not in self.balances:
            verdict = "unknown_user"
        elif self.balances[user] < amount:
            verdict = "insufficient_funds"
        else:
            self.balances[user] -= amount
            verdict = "accepted"
        self.outcomes[body["id"]] = verdict


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
            model.apply(json.loads(fields[b"body"]))
        last = page[-1][0].decode()
