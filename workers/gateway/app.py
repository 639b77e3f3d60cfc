"""The gateway (Starlette): per-user WebSocket confirmations, bet lookups, health, metrics.

``/ws?token=…[&since=SEQ]`` streams the token's user's confirmations (missed ones first
when ``since`` is given); ``/bets/{id}`` shows one of the caller's bets; ``/health`` and
``/metrics`` are for operators; ``/`` is the demo bet slip (only with ``--demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import anyio
import redis
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from workers.adapters import subscriber_tokens as tokens
from workers.adapters.confirmation_feed import SeenSeqs, history_gap, missed_since
from workers.adapters.confirmer_health import confirmer_health
from workers.adapters.ledger_queries import bet_outcome
from workers.adapters.ledger_store import read_ledger
from workers.adapters.redis_connection import redis_client
from workers.adapters.writer_health import writer_health
from workers.gateway.fanout import FanOut, Refused, Subscriber
from workers.gateway.gc_policy import collect_fully_every, defer_full_collections
from workers.gateway.prometheus import registry_for
from workers.settings import Settings

WS_POLICY_VIOLATION: Final = 1008  # close code: a refused token, a client too far behind
WS_TRY_AGAIN_LATER: Final = 1013  # close code: over a connection cap
CLOSE_WAIT_S: Final = 2.0  # for a closing handshake a client that does not read may never do


@dataclass
class GatewayState:
    settings: Settings
    secret: bytes
    aredis: aioredis.Redis
    redis: redis.Redis
    fanout: FanOut


def _state(request: Request | WebSocket) -> GatewayState:
    return request.app.state.gateway


def _token_of(request: Request | WebSocket) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token")


async def ws_confirmations(websocket: WebSocket) -> None:
    st = _state(websocket)
    try:
        user_id = tokens.verify(st.secret, _token_of(websocket))
        since_raw = websocket.query_params.get("since")
        since = int(since_raw) if since_raw is not None else None
    except (tokens.TokenError, ValueError):
        await websocket.close(code=WS_POLICY_VIOLATION)  # before accept: HTTP 403
        return
    try:
        sub = st.fanout.join(user_id)  # before the history is read: nothing slips past
    except Refused as exc:
        await _refuse(websocket, exc)
        return
    try:
        await websocket.accept()
        await _serve_subscriber(websocket, st, sub, since)
    finally:
        st.fanout.leave(sub)


async def _refuse(websocket: WebSocket, refused: Refused) -> None:
    """An HTTP status before the handshake where the server can send one, else close code
    1013 (try again later) right after it."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse({"error": str(refused)}, status_code=refused.status))
    else:
        await websocket.accept()
        await websocket.close(code=WS_TRY_AGAIN_LATER, reason=str(refused))


async def _serve_subscriber(websocket: WebSocket, st: GatewayState, sub: Subscriber,
                            since: int | None) -> None:
    """Missed confirmations (after a gap notice, if any), then live ones, until the client
    leaves or falls ``ws_send_queue_max`` behind."""
    seen = SeenSeqs(st.settings.ws_seen_max)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_until_client_leaves, websocket, tg.cancel_scope)
        tg.start_soon(_until_overflow, sub, tg.cancel_scope)
        try:
            if since is not None:
                await _send_missed(websocket, st, sub, since, seen)
            floor = since or 0  # the client has every seq up to ``since``
            while (item := await sub.next()) is not None:
                if item[0] > floor and seen.first_time(item[0]):
                    await websocket.send_text(item[1])
        except (WebSocketDisconnect, RuntimeError):
            pass
        tg.cancel_scope.cancel()
    if sub.overflowed:
        with anyio.move_on_after(CLOSE_WAIT_S):  # a client that does not read may not ack
            await websocket.close(code=WS_POLICY_VIOLATION, reason="too far behind")


async def _send_missed(websocket: WebSocket, st: GatewayState, sub: Subscriber, since: int,
                       seen: SeenSeqs) -> None:
    gap = await history_gap(st.aredis, sub.user_id, since)
    if gap is not None:
        await websocket.send_json(gap)
    for message in await missed_since(st.aredis, sub.user_id, since):
        if seen.first_time(message["seq"]):
            await websocket.send_json(message)
            sub.last_seq = max(sub.last_seq, message["seq"])


async def _until_client_leaves(websocket: WebSocket, scope: anyio.CancelScope) -> None:
    """Whatever the client sends (text or binary frames) is read and dropped."""
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    except WebSocketDisconnect:
        pass
    scope.cancel()


async def _until_overflow(sub: Subscriber, scope: anyio.CancelScope) -> None:
    await sub.overflow.wait()
    scope.cancel()


async def get_bet(request: Request) -> JSONResponse:
    st = _state(request)
    try:
        user_id = tokens.verify(st.secret, _token_of(request))
    except tokens.TokenError as exc:
        return JSONResponse({"error": str(exc)}, status_code=401)
    bet = await run_in_threadpool(read_bet, st.settings, request.path_params["bet_id"])
    if bet is None or bet["user_id"] != user_id:
        return JSONResponse({"error": "no such bet for this user (it may still be pending)"},
                            status_code=404)
    return JSONResponse(bet)


def read_bet(settings: Settings, bet_id: str) -> dict[str, Any] | None:
    """The bet and its outcome (first outcome of that id); None if not (yet) committed."""
    return read_ledger(settings.db, settings.sqlite_busy_timeout_ms,
                       lambda conn: bet_outcome(conn, bet_id))


async def health(request: Request) -> JSONResponse:
    st = _state(request)
    report = await run_in_threadpool(health_report, st)
    return JSONResponse(report, status_code=200 if report["ok"] else 503)


def health_report(st: GatewayState) -> dict[str, Any]:
    try:
        st.redis.ping()
    except redis.RedisError as exc:
        return {"ok": False, "redis": f"unreachable: {exc}"}
    writer = writer_health(st.redis)
    confirmer = confirmer_health(st.redis, st.settings.db, st.settings.sqlite_busy_timeout_ms,
                                 st.settings.confirm_lag_max_ms, time.time_ns() // 10**6)
    gateway = {"connections": st.fanout.count, "upstream": st.fanout.connected}
    return {
        "ok": writer.ok and confirmer.ok and st.fanout.connected,
        "redis": "ok",
        "gateway": gateway,
        "writer": writer.as_dict(),
        "confirmer": confirmer.as_dict(),
        "breaker": _breaker_state(st),
    }


def _breaker_state(st: GatewayState) -> dict[str, Any]:
    from workers.adapters.breaker_store import BreakerStore

    b = BreakerStore(st.redis, st.settings.breaker_limits).load().breaker
    return {"state": b.state, "reason": b.reason, "since_ms": b.since_ms, "forced": b.forced}


async def metrics(request: Request) -> Response:
    st = _state(request)
    body = await run_in_threadpool(lambda: generate_latest(registry_for(st.redis)))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, demo: bool = False) -> Starlette:
    routes = [
        WebSocketRoute("/ws", ws_confirmations),
        Route("/bets/{bet_id}", get_bet),
        Route("/health", health),
        Route("/metrics", metrics),
    ]
    if demo:
        from workers.gateway.demo import demo_routes

        routes += demo_routes()
    aredis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.gateway_redis_connections_max))
    state = GatewayState(settings, tokens.load_or_create_secret(settings.gateway_secret_file),
                         aredis, redis_client(settings.redis_url), FanOut(
                             settings, aredis,
                             lambda user, since: missed_since(aredis, user, since)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        defer_full_collections()
        tasks = [asyncio.create_task(state.fanout.run()),
                 asyncio.create_task(collect_fully_every(settings.gateway_gc_full_interval_s))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = state
    return app
