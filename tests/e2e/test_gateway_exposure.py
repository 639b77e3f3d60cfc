"""What the gateway gives away: no token in any log, one short line per refused handshake,
operator endpoints only on the operator listener, and a demo no other site can drive."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from producer.client import Producer
from producer.contract import new_deposit
from tests.conftest import Procs
from tests.e2e.gateway_support import Pipeline, receive, start_pipeline

LOG_LINE_MAX = 400  # bytes: a refused handshake is one short line, not a traceback


def _log(procs: Procs, role: str) -> str:
    proc = next(p for p in procs.started if role in p.args)
    return Path(proc.log_path).read_text(errors="replace")


def _first_message_socket(pipe: Pipeline, token: str):
    ws = connect(f"ws://127.0.0.1:{pipe.port}/ws", open_timeout=10)
    ws.send(json.dumps({"token": token, "since": 0}))
    return ws


def test_tokens_never_reach_a_log_whichever_way_they_travel(
        procs: Procs, producer: Producer) -> None:
    pipe = start_pipeline(procs)
    used = [pipe.token(71), pipe.token(72), pipe.token(73), pipe.token(74)]
    by_query = pipe.ws(used[0], since=0)
    by_protocol = connect(f"ws://127.0.0.1:{pipe.port}/ws?since=0", open_timeout=10,
                          subprotocols=["betstream", f"bearer.{used[1]}"])
    assert by_protocol.subprotocol == "betstream", "a browser needs its protocol echoed"
    by_message = _first_message_socket(pipe, used[2])
    deposits = [new_deposit(user, 100) for user in (71, 72, 73)]
    producer.submit_many(deposits)
    for ws, deposit in zip((by_query, by_protocol, by_message), deposits):
        assert [m["id"] for m in receive(ws, 1)] == [deposit.id]
        ws.close()
    for headers, params in (({"authorization": f"Bearer {used[3]}"}, {}),
                            ({}, {"token": used[3]})):
        assert httpx.get(f"{pipe.http}/bets/{deposits[0].id}", headers=headers,
                         params=params).status_code == 404  # someone else's: not found
    with pytest.raises(InvalidStatus):
        forged = used[0][:-1] + ("1" if used[0].endswith("0") else "0")  # another signature
        pipe.ws(forged).close()  # a forged one is refused (and logged)

    logs = "".join(_log(procs, role) for role in ("gateway", "writer", "confirmer"))
    assert "[redacted]" in logs, "the query-string handshake is logged, token redacted"
    for token in used:
        signature = token.rsplit(".", 1)[1]
        assert token not in logs and signature not in logs and signature[:16] not in logs


def test_a_refused_handshake_logs_one_short_line_and_no_traceback(procs: Procs) -> None:
    pipe = start_pipeline(procs)
    refused = ["garbage", "v1.1.1.%C3%A9", pipe.token(75)[:-2]]
    for token in refused:
        with pytest.raises(InvalidStatus):
            pipe.ws(token).close()
    silent = connect(f"ws://127.0.0.1:{pipe.port}/ws", open_timeout=10)
    silent.send(b"\x00binary, not a token")  # a first message that is no token: closed
    with pytest.raises(Exception, match="1008"):
        silent.recv(timeout=10)
    log = _log(procs, "gateway")
    lines = [line for line in log.splitlines() if '/ws' in line]
    assert len(lines) == len(refused) + 1, lines
    assert all(len(line.encode()) < LOG_LINE_MAX for line in lines), lines
    assert "Traceback" not in log and "connection rejected" not in log


def test_metrics_and_detailed_health_live_on_the_operator_listener_only(
        procs: Procs) -> None:
    pipe = start_pipeline(procs)
    public = httpx.get(f"{pipe.http}/health")
    assert public.status_code == 200 and public.json() == {"ok": True}
    assert httpx.get(f"{pipe.http}/metrics").status_code == 404
    detailed = httpx.get(f"{pipe.ops}/health").json()
    assert detailed["ok"] and detailed["writer"]["lease_holder"]
    assert "betstream_breaker_state" in httpx.get(f"{pipe.ops}/metrics").text


def test_the_ops_port_in_use_is_an_operators_message_and_exit_2(procs: Procs) -> None:
    pipe = start_pipeline(procs)
    second = procs.run("gateway", "--port", "0", "--ops-port", str(pipe.ops_port))
    assert second.returncode == 2
    assert f"operator listener cannot listen on 127.0.0.1:{pipe.ops_port}" in second.stderr
    assert "Traceback" not in second.stderr


def _post(pipe: Pipeline, headers: dict[str, str], body: str | None = None) -> httpx.Response:
    bet = body or json.dumps({"user_id": 1, "stake": 10, "market": "m", "selection": "home",
                              "odds": "2.00"})
    return httpx.post(f"{pipe.http}/demo/bets", content=bet,
                      headers={"content-type": "application/json", **headers})


def test_the_demo_refuses_other_sites_and_system_accounts(
        procs: Procs, redis_client: redis.Redis) -> None:
    pipe = start_pipeline(procs, demo=True)
    here = f"127.0.0.1:{pipe.port}"
    assert _post(pipe, {"origin": f"http://{here}"}).status_code == 202
    assert _post(pipe, {}).status_code == 202  # curl and scripts send no Origin
    assert _post(pipe, {"origin": "http://attacker.example"}).status_code == 403
    assert _post(pipe, {"origin": "null"}).status_code == 403
    assert _post(pipe, {"host": "attacker.example"}).status_code == 403  # DNS rebinding
    plain = httpx.post(f"{pipe.http}/demo/bets", content="{}",
                       headers={"content-type": "text/plain", "origin": f"http://{here}"})
    assert plain.status_code == 415, "a form post (no pre-flight) is never a bet"
    assert httpx.get(f"{pipe.http}/demo/session", params={"user_id": 0}).status_code == 400
    assert httpx.get(f"{pipe.http}/demo/session", params={"user_id": -1}).status_code == 400
    assert httpx.get(f"{pipe.http}/demo/session", headers={"host": "evil.example"},
                     params={"user_id": 1}).status_code == 403
    assert httpx.get(f"{pipe.http}/demo/session", params={"user_id": 1}).json()["token"]
