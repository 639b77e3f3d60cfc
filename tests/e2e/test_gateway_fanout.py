"""The gateway serves thousands of subscribers from one upstream subscription, with caps
that refuse cleanly, a bound on what waits for a slow subscriber, and a notice when a
resume asks for more history than is kept."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import redis
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from producer import constants as c
from tests.conftest import Procs, wait_for
from tests.e2e.gateway_support import Pipeline, gateway_state, start_gateway

SOCKETS = 2_000  # the default run; the benchmark holds 10,000
USERS = SOCKETS // 5


def tokens(procs: Procs, *user_ids: int) -> list[str]:
    run = procs.run("token", *map(str, user_ids))
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def confirmation(user_id: int, seq: int, pad: str = "") -> str:
    return json.dumps({"id": f"i{seq}", "kind": "deposit", "user_id": user_id,
                       "status": "accepted", "reason": None, "balance": 1, "seq": seq,
                       "committed_at": 0, "duplicate": False, "detail": pad or None})


def refusal_status(gw: Pipeline, token: str) -> int:
    """The HTTP status a refused WebSocket got (1013 close after accept counts as 1013)."""
    try:
        ws = gw.ws(token)
    except InvalidStatus as exc:
        return exc.response.status_code
    try:
        ws.recv(timeout=5)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else 0
    return 0


def test_a_user_over_the_per_user_cap_is_refused_while_other_users_connect(
        procs: Procs) -> None:
    gw = start_gateway(procs, BETSTREAM_WS_PER_USER_MAX="5")
    mine, other = tokens(procs, 42, 43)
    held = [gw.ws(mine) for _ in range(5)]
    assert refusal_status(gw, mine) in (429, 1013), "a sixth socket of one user"
    theirs = gw.ws(other)  # every other user still gets in
    assert gateway_state(gw)["connections"] == 6
    held.pop().close()
    wait_for(lambda: gateway_state(gw)["connections"] == 5, 10, "the closed socket to go")
    held.append(gw.ws(mine))  # a freed place is taken again
    for ws in [*held, theirs]:
        ws.close()


def test_past_the_gateways_connection_cap_everyone_is_refused_cleanly(procs: Procs) -> None:
    gw = start_gateway(procs, BETSTREAM_WS_CONNECTIONS_MAX="10")
    ids = list(range(1, 12))
    toks = tokens(procs, *ids)
    held = [gw.ws(t) for t in toks[:10]]
    assert refusal_status(gw, toks[10]) in (503, 1013)
    for ws in held:
        ws.close()


def test_thousands_of_subscribers_each_get_their_users_confirmations_once(
        procs: Procs, redis_client: redis.Redis) -> None:
    gw = start_gateway(procs)
    user_ids = list(range(1_000, 1_000 + USERS))
    toks = dict(zip(user_ids, tokens(procs, *user_ids)))
    got = asyncio.run(_many_subscribers(gw, toks, redis_client))
    assert len(got) == SOCKETS
    for (user_id, _), messages in got.items():
        assert [m["seq"] for m in messages] == [user_id * 10, user_id * 10 + 1], user_id
        assert {m["user_id"] for m in messages} == {user_id}


async def _many_subscribers(gw: Pipeline, toks: dict[int, str], client: redis.Redis
                            ) -> dict[tuple[int, int], list[dict]]:
    url = f"ws://127.0.0.1:{gw.port}/ws?token="
    sockets = {}
    for user_id, token in toks.items():
        for n in range(5):
            sockets[(user_id, n)] = await websockets.connect(url + token, open_timeout=30)
    assert gateway_state(gw)["connections"] == SOCKETS
    pipe = client.pipeline(transaction=False)
    for user_id in toks:
        for seq in (user_id * 10, user_id * 10 + 1):
            pipe.publish(c.user_channel(user_id), confirmation(user_id, seq))
    pipe.execute()

    async def two(ws) -> list[dict]:
        return [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(2)]

    results = await asyncio.gather(*(two(ws) for ws in sockets.values()))
    for ws in sockets.values():
        await ws.close()
    return dict(zip(sockets, results))


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:"))


def _silent_subscriber(port: int, token: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in sock.recv(1024).split(b"\r\n", 1)[0]
    return sock


def test_a_subscriber_that_never_reads_is_dropped_and_memory_stays_flat(
        procs: Procs, redis_client: redis.Redis) -> None:
    gw = start_gateway(procs, BETSTREAM_WS_SEND_QUEUE_MAX="100")
    gateway = next(p for p in procs.started if "gateway" in p.args)
    token, = tokens(procs, 77)
    silent = _silent_subscriber(gw.port, token)
    wait_for(lambda: gateway_state(gw)["connections"] == 1, 10, "the silent subscriber")
    rss_before = _rss_kb(gateway.pid)
    pad = "x" * 10_000  # 10 KB each: 40 MB in all, were it all kept
    for seq in range(1, 4_001):
        redis_client.publish(c.user_channel(77), confirmation(77, seq, pad))
    wait_for(lambda: gateway_state(gw)["connections"] == 0, 30,
             "the gateway to drop the subscriber that does not read")
    growth_mb = (_rss_kb(gateway.pid) - rss_before) / 1024
    assert growth_mb < 20, f"the gateway grew {growth_mb:.0f} MB for one silent subscriber"
    silent.close()


@pytest.mark.parametrize("since, kept, want", [
    (1, 150, "gap"),  # the user's history was trimmed past what the client has
    (5, 0, "gap-unknown"),  # nothing kept (expired or lost): coverage unknown
    (0, 0, None),  # a client that has seen nothing misses nothing
    (140, 150, None),  # everything after since is still kept
])
def test_a_resume_past_the_kept_history_says_so_first(
        procs: Procs, redis_client: redis.Redis, since: int, kept: int,
        want: str | None) -> None:
    gw = start_gateway(procs)
    user = 88
    for seq in range(1, kept + 1):
        redis_client.xadd(c.user_confirmations(user), {"outcome": confirmation(user, seq)},
                          maxlen=10, approximate=True)
    token, = tokens(procs, user)
    ws = gw.ws(token, since=since)
    redis_client.publish(c.user_channel(user), confirmation(user, 1_000))  # a live one
    first = json.loads(ws.recv(timeout=10))
    if want is None:
        assert "gap" not in first
    else:
        oldest = json.loads(redis_client.xrange(c.user_confirmations(user), count=1)[0][1][
            b"outcome"])["seq"] if kept else None
        assert first == {"gap": True, "since": since, "oldest": oldest}
    ws.close()


def test_bad_tokens_and_binary_frames_get_clean_answers_not_tracebacks(
        procs: Procs, redis_client: redis.Redis) -> None:
    import httpx

    gw = start_gateway(procs)
    gateway = next(p for p in procs.started if "gateway" in p.args)
    for bad in ("v1.1.1.%C3%A9", "v1.%C2%B2.99999999999999.abc"):
        answer = httpx.get(f"{gw.http}/bets/x?token={bad}", timeout=10)
        assert answer.status_code == 401, (bad, answer.status_code, answer.text[:200])
    token, = tokens(procs, 61)
    ws = gw.ws(token)
    ws.send(b"\x00\x01binary")  # a client may send anything; it is read and dropped
    redis_client.publish(c.user_channel(61), confirmation(61, 5))
    assert json.loads(ws.recv(timeout=10))["seq"] == 5, "the socket still serves"
    ws.close()
    log = Path(gateway.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-2000:]
