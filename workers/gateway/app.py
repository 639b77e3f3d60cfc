"""The gateway (Starlette): per-user WebSocket confirmations, bet lookups, health, metrics.

``/ws?token=…[&since=SEQ]`` streams the token's user's confirmations (missed ones first
when ``since`` is given); ``/bets/{id}`` shows one of the caller's bets; ``/health`` and
``/metrics`` are for operators; ``/`` is the demo bet slip (only with ``--demo``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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
from workers.adapters.confirmation_feed import stream_confirmations, subscribe
from workers.adapters.confirmer_health import confirmer_health
from workers.adapters.ledger_queries import bet_outcome
from workers.adapters.ledger_store import connect
from workers.adapters.redis_connection import redis_client
from workers.adapters.writer_health import writer_health
from workers.gateway.prometheus import registry_for
from workers.settings import Settings

WS_POLICY_VIOLATION = 1008  # close code for a refused token


@dataclass
class GatewayState:
    settings: Settings
    secret: bytes
    aredis: aioredis.Redis
    redis: redis.Redis


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
    pubsub = await subscribe(st.aredis, user_id)
    try:
        await websocket.accept()
    except BaseException:
        await pubsub.aclose()  # the client left during the handshake
        raise
    async with anyio.create_task_group() as tg:
        async def drain_client() -> None:
            try:
                while True:
                    await websocket.receive_text()
            except WebSocketDisconnect:
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(drain_client)
        try:
            await stream_confirmations(st.aredis, pubsub, user_id, since, websocket.send_json,
                                       st.settings.ws_seen_max)
        except (WebSocketDisconnect, RuntimeError):
            tg.cancel_scope.cancel()


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
    """The bet and its outcome (first outcome of that id), from a read-only connection."""
    try:
        conn = connect(settings.db, settings.sqlite_busy_timeout_ms, readonly=True)
    except Exception:
        return None
    try:
        return bet_outcome(conn, bet_id)
    finally:
        conn.close()


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
    return {
        "ok": writer.ok and confirmer.ok,
        "redis": "ok",
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
    app = Starlette(routes=routes)
    app.state.gateway = GatewayState(
        settings, tokens.load_or_create_secret(settings.gateway_secret_file),
        aioredis.Redis.from_url(settings.redis_url), redis_client(settings.redis_url))
    return app
