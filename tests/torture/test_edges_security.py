"""Scenario 5: security of the edges, with real processes.

- The gateway refuses missing, forged, tampered, expired and other users' tokens, on the
  WebSocket and on HTTP (``/bets/{id}``); every refused attempt is counted.
- No keyring secret and not the gateway secret (nor their hex / base64 forms) ever appears
  in any log, stdout or stderr of writer, confirmer, gateway, load and token, also through
  failures (bad keyring files at start and on reload, forged signatures, bad tokens), nor in
  the ledger file or in Redis.
- Key rotation while traffic flows: a new key is dead-lettered ``unknown_kid`` until a
  SIGHUP reload adds it, then accepted; the old key, given a ``retire_at``, is accepted for
  entries that reached the stream before it and dead-lettered ``retired_key`` after; a bad
  keyring file on reload is refused and the keyring in force stays in force; same writer pid
  throughout.
"""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from producer import constants as c
from producer.client import Producer, entry_fields
from producer.contract import intent_body, new_bet, new_deposit, now_ms
from producer.errors import KeyRetired
from producer.signing import Key, Keyring
from tests.conftest import KEYRING, Procs, wait_for
from tests.e2e.gateway_support import Collector, receive, start_pipeline
from tests.support import deadletters, drained, query
from workers.adapters import subscriber_tokens as tokens
from workers.core.intake import ingress_ms

NEW_KID = "cashier-2"
NEW_SECRET = "cashier-rotated-secret-0002"


# --- tokens --------------------------------------------------------------------------------


def bad_tokens(secret: bytes, user_id: int, good: str) -> dict[str, str]:
    """Every way a token can be wrong, by name (the gateway must refuse each one)."""
    now = now_ms()
    _, uid, expires, mac = good.split(".")
    forged = tokens.issue(b"not-the-gateway-secret-0123456789abcdef", user_id, 60)
    out = {"empty": "", "garbage": "garbage", "expired": tokens.issue(secret, user_id, 1,
                                                                        now_ms=now - 10_000),
           "expired now": tokens.issue(secret, user_id, 0), "forged": forged,
           "other user, same mac": f"v1.{user_id + 1}.{expires}.{mac}",
           "longer expiry, same mac": f"v1.{uid}.{int(expires) + 10**9}.{mac}",
           "version v2": f"v2.{uid}.{expires}.{mac}", "upper-case mac": good.upper(),
           "truncated mac": good[:-1], "extra part": good + ".x", "no mac": good.rsplit(".", 1)[0],
           "negative user": f"v1.-{uid}.{expires}.{mac}", "too long": good + "0" * 300,
           "mac of other user": f"v1.{uid}.{expires}." + tokens.issue(secret, user_id + 1, 60)
           .rsplit(".", 1)[1], "unicode digits": f"v1.{'٣'}.{expires}.{mac}",
           "whitespace": f" {good} ", "NUL": good + "\x00"}
    for i in range(0, len(mac), 8):  # one hex digit changed at a few places of the MAC
        digit = "0" if mac[i] != "0" else "1"
        out[f"mac digit {i}"] = f"v1.{uid}.{expires}.{mac[:i]}{digit}{mac[i + 1:]}"
    return out


def test_gateway_refuses_every_bad_token(procs: Procs, producer: Producer, env: dict[str, str],
                                         torture_report) -> None:
    row = torture_report("edges: gateway refuses bad tokens (WS + HTTP)")
    pipe = start_pipeline(procs)
    for proc in procs.started:  # a reload signal sent to every process stops none of them
        proc.send_signal(signal.SIGHUP)
    secret = tokens.load_or_create_secret(Path(env["BETSTREAM_GATEWAY_SECRET_FILE"]))
    owner, other = 41, 42
    good = pipe.token(owner)
    bet = new_bet(owner, 1, "m", "s", "2.00")
    producer.submit_many([new_deposit(owner, 10), bet])
    url = f"{pipe.http}/bets/{bet.id}"
    wait_for(lambda: httpx.get(url, params={"token": good}).status_code == 200, 30,
             "the owner to see the bet")
    other_token = pipe.token(other)
    attempts = refused = 0
    bad = {**bad_tokens(secret, owner, good), "missing": None}
    for name, token in bad.items():
        attempts += 2
        if token is not None:  # none in the handshake: it may still come as a first message
            with pytest.raises(InvalidStatus, match="403"):
                _ws(pipe.port, token).close()
        refused += 1 + _first_message_refused(pipe.port, token)
        for response in _http_attempts(url, token):
            attempts += 1
            assert response.status_code == 401, (name, response.status_code)
            assert "stake" not in response.text
            refused += 1
    for response in _http_attempts(url, other_token):  # valid, but not the bet's owner
        attempts += 1
        assert response.status_code == 404 and "stake" not in response.text
        refused += 1
    attempts += 1  # another user's valid WebSocket gets none of the owner's outcomes
    spy = Collector(_ws(pipe.port, other_token, since=0))
    owner_ws = _ws(pipe.port, good)
    marker = new_deposit(owner, 3)
    producer.submit(marker)
    assert [m["id"] for m in receive(owner_ws, 1)] == [marker.id]
    owner_ws.close()
    if not spy.close():
        refused += 1
    assert all(p.poll() is None for p in procs.started), "SIGHUP stopped a process"
    row.intents = attempts
    row.faults = f"{attempts} bad-token requests ({len(bad)} kinds of token) on /ws and /bets"
    row.lost = row.doubled = 0
    row.audit = "n/a"
    row.extra.update(inputs=attempts, refused=refused, kinds=sorted(bad))
    assert refused == attempts


def _first_message_refused(port: int, token: str | None) -> bool:
    """The token sent as the first message instead: the socket is closed 1008 (policy
    violation) before a single confirmation is sent."""
    ws = _ws(port, None)
    ws.send(json.dumps({"token": token, "since": 0}))
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    return closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def _ws(port: int, token: str | None, since: int | None = None):  # type: ignore[no-untyped-def]
    from urllib.parse import quote

    from websockets.sync.client import connect

    query = [] if token is None else [f"token={quote(token, safe='')}"]
    query += [] if since is None else [f"since={since}"]
    return connect(f"ws://127.0.0.1:{port}/ws?{'&'.join(query)}", open_timeout=10)


def _http_attempts(url: str, token: str | None) -> list[httpx.Response]:
    """The token as a query parameter and as a Bearer header (when it can be sent as one)."""
    if token is None:
        return [httpx.get(url)]
    out = [httpx.get(url, params={"token": token})]
    try:
        out.append(httpx.get(url, headers={"authorization": f"Bearer {token}"}))
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        pass  # NUL or non-ASCII: no client can send it as a header
    return out


# --- key rotation under traffic --------------------------------------------------------------


@dataclass
class Sender:
    """Pushes deposits signed with one key, as fast as a steady producer, on its own thread.

    It signs raw (no Producer): a producer that lags behind a rotation keeps using the old
    key, and that is exactly what the writer must handle."""

    client: redis.Redis
    key: Key
    users: range
    sent: list[tuple[str, str]] = field(default_factory=list)  # (entry id, intent id)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def send_one(self) -> str:
        intent = new_deposit(self.users[len(self.sent) % len(self.users)], 1)
        eid = self.client.xadd(c.STREAM_INTENTS, entry_fields(self.key, intent_body(intent)))
        self.sent.append((eid.decode(), intent.id))
        return eid.decode()

    def start(self, interval_s: float = 0.01) -> Sender:
        def run() -> None:
            while not self.stop.is_set():
                self.send_one()
                self.stop.wait(interval_s)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def halt(self) -> list[tuple[str, str]]:
        self.stop.set()
        if self.thread:
            self.thread.join(10)
        return self.sent


def log_events(path: str, event: str) -> list[dict]:
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == event:
            out.append(rec)
    return out


def reload(writer, event: str) -> dict:  # type: ignore[no-untyped-def]
    """SIGHUP the writer and wait for its log line about the reload."""
    before = len(log_events(writer.log_path, event))
    writer.send_signal(signal.SIGHUP)
    def logged() -> dict | None:
        events = log_events(writer.log_path, event)
        return events[-1] if len(events) > before else None

    return wait_for(logged, 30, f"the writer to log {event}")  # type: ignore[return-value]


def results(db: str, client: redis.Redis) -> dict[str, list[str]]:
    """entry id -> ['accepted'] / ['rejected:<reason>'] / ['dead:<reason>'] (all of them)."""
    out: dict[str, list[str]] = {}
    if not Path(db).exists():
        return out
    for d in deadletters(client):
        out.setdefault(d["entry_id"], []).append(f"dead:{d['reason']}")
    try:
        rows = query(db, "SELECT entry_id, status, reason FROM outcomes")
    except sqlite3.OperationalError:
        return out  # the writer is still creating the schema
    for eid, status, reason in rows:
        out.setdefault(eid, []).append(status if status == "accepted" else f"rejected:{reason}")
    return out


def test_key_rotation_with_sighup_while_traffic_flows(procs: Procs, redis_client: redis.Redis,
                                                      env: dict[str, str], torture_report) -> None:
    row = torture_report("edges: key rotation by SIGHUP under traffic")
    path = Path(env["BETSTREAM_KEYRING"])
    db = env["BETSTREAM_DB"]
    writer = procs.start("writer")
    old_key = Keyring.from_mapping(KEYRING).get("cashier")
    new_key = Key(NEW_KID, NEW_SECRET.encode(), frozenset({"deposit", "withdrawal"}))
    client = redis.Redis.from_url(env["BETSTREAM_REDIS_URL"])
    old = Sender(client, old_key, range(7001, 7011)).start()
    wait_for(lambda: old.sent and old.sent[0][0] in results(db, redis_client), 60,
             "the writer to take traffic")
    expected: dict[str, str] = {}

    # 1. the new key is unknown until the keyring is reloaded
    early = Sender(client, new_key, range(7101, 7105))
    for _ in range(5):
        expected[early.send_one()] = "dead:unknown_kid"
    wait_for(lambda: set(expected) <= set(results(db, redis_client)), 60,
             "the unknown-kid entries to be dead-lettered (before the reload)")

    # 2. add it: SIGHUP, and from then on it is accepted (while the old key keeps flowing)
    ring = {**KEYRING, NEW_KID: {"secret": NEW_SECRET, "kinds": ["deposit", "withdrawal"]}}
    path.write_text(json.dumps(ring))
    loaded = reload(writer, "keyring.reloaded")
    assert NEW_KID in loaded["kids"]
    new = Sender(client, new_key, range(7201, 7211)).start()

    # 3. retire the old key a little ahead: entries reaching the stream before retire_at are
    #    accepted, from retire_at on dead-lettered retired_key (the old sender never stops)
    retire_at = now_ms() + 2_500
    ring["cashier"] = {**ring["cashier"], "retire_at": retire_at}
    path.write_text(json.dumps(ring))
    assert reload(writer, "keyring.reloaded")["retiring"] == {"cashier": retire_at}
    assert now_ms() < retire_at - 500, "the reload took too long to test the boundary"
    with pytest.raises(KeyRetired):  # an up-to-date producer refuses to sign with it
        Producer(client, Keyring.load(path), kids={"deposit": "cashier"}).key_for("deposit")
    assert Producer(client, Keyring.load(path)).key_for("deposit").kid == NEW_KID
    wait_for(lambda: now_ms() > retire_at + 1_000, 10, "the old key's retirement to pass")

    # 4. a broken keyring file on reload is refused; the keyring in force stays in force
    path.write_text(json.dumps(ring)[:-7])
    refused = reload(writer, "keyring.reload_refused")
    assert "unreadable" in refused["error"] and NEW_KID in refused["kids"]
    wait_for(lambda: now_ms() > retire_at + 2_000, 10, "more traffic after the bad reload")
    for kid, key in (("cashier", new_key), (NEW_KID, old_key)):  # forgeries stay forgeries
        forged = entry_fields(key, intent_body(new_deposit(7301, 1)))
        forged["kid"] = kid
        expected[redis_client.xadd(c.STREAM_INTENTS, forged).decode()] = "dead:bad_signature"
    sent_old, sent_new = old.halt(), new.halt()
    for eid, _ in sent_old:
        expected[eid] = "accepted" if ingress_ms(eid) < retire_at else "dead:retired_key"
    for eid, _ in sent_new:
        expected[eid] = "accepted"
    wait_for(lambda: drained(redis_client), 60, "the writer to drain the stream")

    got = results(db, redis_client)
    wrong = [(eid, want, got.get(eid)) for eid, want in expected.items()
             if got.get(eid) != [want]]
    audit = procs.run("audit")
    before = sum(1 for e in sent_old if ingress_ms(e[0]) < retire_at)
    row.intents = len(expected)
    row.faults = ("3 SIGHUP reloads under traffic: add a key, retire the old one, a broken "
                  "file (refused)")
    row.lost = sum(1 for eid in expected if eid not in got)
    row.doubled = sum(1 for eid in expected if len(got.get(eid, [])) > 1)
    row.audit = "pass" if audit.returncode == 0 else "FAIL"
    row.extra.update(inputs=len(expected), old_key_before_retire=before,
                     old_key_after_retire=len(sent_old) - before, new_key=len(sent_new),
                     writer_pid=writer.pid)
    assert wrong == [], wrong[:10]
    assert before > 10 and len(sent_old) - before > 10, "traffic on both sides of retire_at"
    assert writer.poll() is None and "Traceback" not in Path(writer.log_path).read_text()
    assert audit.returncode == 0, audit.stdout


# --- secrets never leak ----------------------------------------------------------------------


def secret_forms(secret: str) -> set[bytes]:
    """The text and every form a careless log line could derive from it."""
    raw = secret.encode()
    out = {raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw),
           base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"="),
           base64.b32encode(raw).rstrip(b"=")}
    try:  # the gateway secret is hex text: also its decoded bytes, encoded again
        key = bytes.fromhex(secret)
        out |= {base64.b64encode(key), base64.urlsafe_b64encode(key).rstrip(b"=")}
    except ValueError:
        pass
    return out


BAD_KEYRINGS = {  # (file bytes, the secret inside it); each must stop the process, quietly
    "short secret": (b'{"frontend": {"secret": "shortie-sec", "kinds": ["bet"]}}', "shortie-sec"),
    "latin-1 file": (('{"frontend": {"secret": "caf\u00e9-latin1-secret-xyz", '
                      '"kinds": ["bet"]}}').encode("latin-1"), "caf\u00e9-latin1-secret-xyz"),
    "trailing comma": (b'{"frontend": {"secret": "trailing-comma-secret-1", "kinds": ["bet"]},}',
                       "trailing-comma-secret-1"),
    "secret not a string": ((b'{"frontend": {"secret": ["list-wrapped-secret-01"], '
                             b'"kinds": ["bet"]}}'), "list-wrapped-secret-01"),
    "bad retire_at": ((b'{"frontend": {"secret": "retire-at-typo-secret-1", "kinds": ["bet"], '
                       b'"retire_at": "soon"}}'), "retire-at-typo-secret-1"),
    "truncated": (b'{"frontend": {"secret": "truncated-file-secret-01", "kinds": ["b',
                  "truncated-file-secret-01"),
}


def redis_dump(client: redis.Redis) -> bytes:
    """Every key and value in Redis, as bytes (streams, hashes, lists, sets, strings)."""
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        parts.append(key)
        if kind == "string":
            parts.append(client.get(key) or b"")
        elif kind == "hash":
            parts += [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == "list":
            parts += client.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(client.smembers(key))
        elif kind == "zset":
            parts += client.zrange(key, 0, -1)
        elif kind == "stream":
            for eid, fields in client.xrange(key):
                parts += [eid, *[b for kv in fields.items() for b in kv]]
    return b"\n".join(parts)


def test_secrets_never_appear_in_logs_outputs_ledger_or_redis(
        procs: Procs, redis_client: redis.Redis, env: dict[str, str], tmp_path: Path,
        torture_report) -> None:
    row = torture_report("edges: secrets never in logs / outputs / ledger / Redis")
    debug = {"BETSTREAM_LOG_LEVEL": "debug"}
    pipe = start_pipeline(procs, **debug)
    outputs: list[bytes] = []

    def run(*args: str, **extra: str) -> int:
        done = procs.run(*args, **debug, **extra)
        outputs.append((done.stdout + done.stderr).encode())
        return done.returncode

    assert run("token", "51") == 0
    assert run("load", "--users", "5", "--bets", "150", "--quiet", "--json") == 0
    assert run("load", "--users", "3", "--bets", "30", "--withdrawals", "0.2") == 0
    intents = 5 + 150 + 3 + 30
    ring = Keyring.from_mapping(KEYRING)
    for kid in KEYRING:  # forgeries under every kid, and a key used under another's name
        for signer in (Key(kid, b"guessed-secret-0000000", frozenset({"bet"})), ring.get(
                "settlement" if kid != "settlement" else "frontend")):
            forged = entry_fields(signer, intent_body(new_deposit(52, 1)))
            forged["kid"] = kid
            redis_client.xadd(c.STREAM_INTENTS, forged)
            intents += 1
    for token in ("garbage", tokens.issue(b"x" * 32, 51, 60), pipe.token(51)[:-2]):
        with pytest.raises(InvalidStatus):
            _ws(pipe.port, token).close()
        assert httpx.get(f"{pipe.http}/bets/x", params={"token": token}).status_code == 401
    valid = pipe.token(51)  # a session with a good token: handshake, lookups, messages
    _ws(pipe.port, valid, since=0).close()
    assert httpx.get(f"{pipe.http}/bets/x", params={"token": valid}).status_code == 404
    assert httpx.get(f"{pipe.http}/bets/x",
                     headers={"authorization": f"Bearer {valid}"}).status_code == 404
    for name, (raw, _) in BAD_KEYRINGS.items():
        bad = tmp_path / f"bad-{name.replace(' ', '-')}.json"
        bad.write_bytes(raw)
        for command in (("writer",), ("load", "--users", "1", "--bets", "1", "--quiet")):
            assert run(*command, BETSTREAM_KEYRING=str(bad)) == 2, (name, command)
    writer = next(p for p in procs.started if p.args[3] == "writer")
    good = Path(env["BETSTREAM_KEYRING"]).read_bytes()
    for raw, _ in BAD_KEYRINGS.values():  # the same files on reload of the running writer
        Path(env["BETSTREAM_KEYRING"]).write_bytes(raw)
        reload(writer, "keyring.reload_refused")
    Path(env["BETSTREAM_KEYRING"]).write_bytes(good)
    reload(writer, "keyring.reloaded")
    wait_for(lambda: drained(redis_client), 60, "the writer to drain the stream")
    assert run("audit") == 0
    assert run("health") == 0
    for proc in procs.started:
        proc.send_signal(signal.SIGTERM)  # the stop path logs too
        proc.wait(30)

    secrets = {f"keyring {kid}": e["secret"] for kid, e in KEYRING.items()}
    secrets |= {f"bad keyring {n}": s for n, (_, s) in BAD_KEYRINGS.items()}
    secrets["gateway"] = Path(env["BETSTREAM_GATEWAY_SECRET_FILE"]).read_text().strip()
    sources = {f"output {i}": out for i, out in enumerate(outputs)}
    sources |= {p.name: p.read_bytes() for p in procs.logdir.glob("*.log")}
    sources |= {p.name: p.read_bytes() for p in Path(env["BETSTREAM_DB"]).parent.glob(
        Path(env["BETSTREAM_DB"]).name + "*")}
    sources["redis"] = redis_dump(redis_client)
    leaks = [(name, where) for name, secret in secrets.items() for form in secret_forms(secret)
             for where, text in sources.items() if form in text]
    # a token is a credential too: `betstream token` prints it (its output), nothing logs it
    stored = {k: v for k, v in sources.items() if not k.startswith("output")}
    leaks += [(f"token {form[:12]!r}", where) for form in (valid.encode(),
              valid.rsplit(".", 1)[1].encode()) for where, text in stored.items()
              if form in text]
    logs = b"".join(v for k, v in sources.items() if k.endswith(".log") or "output" in k)
    row.intents = intents
    row.faults = (f"{len(BAD_KEYRINGS)} bad keyring files x (writer start, load start, "
                  f"SIGHUP reload), {3 * len(KEYRING)} forged entries, 6 bad tokens; "
                  f"{len(secrets)} secrets x {sum(len(secret_forms(s)) for s in secrets.values())} "
                  "forms (text, hex, base64, base32) scanned")
    row.lost = row.doubled = None
    row.audit = "pass"
    row.extra.update(inputs=intents, sources=len(sources),
                     scanned_bytes=sum(len(v) for v in sources.values()), leaks=leaks)
    assert leaks == []
    assert b"keyring.reload_refused" in logs and b"bad_signature" in sources["redis"]
    assert len(sources) > len(outputs) + 3 and row.extra["scanned_bytes"] > 100_000
