"""The gateway's public port (Starlette): per-user WebSocket confirmations, bet lookups and a
minimal health check.

``/ws`` streams the token's user's confirmations (missed ones first when ``since`` is
given). The token comes in the handshake (``Authorization: Bearer``, the sub-protocols
``betstream`` + ``bearer.<token>`` a browser can set, or ``?token=``) or as the first
message, ``{"token": "…", "since": SEQ}``. ``/bets/{id}`` shows one of the caller's bets;
``/health`` says ``{"ok": …}`` only; ``/`` is the demo bet slip (only with ``--demo``).
``/metrics`` and the detailed health are on the operator listener (``operator.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import anyio
import redis
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from producer.contract import now_ms
from workers.adapters import subscriber_tokens as tokens
from workers.adapters.confirmation_feed import SeenSeqs, history_gap, missed_since
from workers.adapters.ledger_queries import bet_outcome
from workers.adapters.ledger_store import read_ledger
from workers.adapters.redis_connection import redis_client
from workers.adapters.writer_silence import WriterSilence
from workers.gateway.fanout import FanOut, Refused, Subscriber
from workers.gateway.gc_policy import collect_fully_every, defer_full_collections
from workers.gateway.operator import CachedHealth, create_operator_app, health_report
from workers.settings import Settings

SUBPROTOCOL: Final = "betstream"  # selected when offered, so a browser accepts the socket
TOKEN_SUBPROTOCOL_PREFIX: Final = "bearer."  # offered beside it: bearer.<token>
FIRST_MESSAGE_LEN_MAX: Final = 1_024  # characters: a token and a seq, nothing bigger
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
    health: CachedHealth


def _state(request: Request | WebSocket) -> GatewayState:
    return request.app.state.gateway


def _token_of(request: Request | WebSocket) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("token")


@dataclass(frozen=True)
class Credentials:
    """What a subscriber presents: its token and, to resume, the last seq it has."""

    token: str | None
    since: object = None


def _handshake_credentials(websocket: WebSocket) -> Credentials:
    """From the handshake: ``Authorization: Bearer``, the ``bearer.<token>`` sub-protocol
    (what a browser can set) or ``?token=``."""
    token = _token_of(websocket)
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            token = offered[len(TOKEN_SUBPROTOCOL_PREFIX):]
    return Credentials(token, websocket.query_params.get("since"))


async def _first_message_credentials(websocket: WebSocket, timeout_s: float) -> Credentials:
    """``{"token": "…", "since": SEQ}`` as the first text message, within the timeout;
    anything else (a binary frame, other JSON, nothing) presents no token."""
    with anyio.move_on_after(timeout_s):
        message = await websocket.receive()
        text = message.get("text")
        if isinstance(text, str) and len(text) <= FIRST_MESSAGE_LEN_MAX:
            with contextlib.suppress(ValueError):
                body = json.loads(text)
                if isinstance(body, dict) and isinstance(body.get("token"), str):
                    return Credentials(body["token"], body.get("since"))
    return Credentials(None)


def _since(raw: object) -> int | None:
    """The resume point: a seq >= 0 (a JSON number or digits); ValueError otherwise."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).isdigit():
        raise ValueError("since must be a seq (an integer >= 0)")
    return int(raw)


async def ws_confirmations(websocket: WebSocket) -> None:
    st = _state(websocket)
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None
    credentials = _handshake_credentials(websocket)
    if credentials.token is None:  # it may come as the first message: accept to read it
        await websocket.accept(subprotocol=subprotocol)
        credentials = await _first_message_credentials(
            websocket, st.settings.ws_auth_timeout_ms / 1000)
    try:
        user_id = tokens.verify(st.secret, credentials.token)
        since = _since(credentials.since)
    except (tokens.TokenError, ValueError):
        await websocket.close(code=WS_POLICY_VIOLATION)  # before accept: HTTP 403
        return
    try:
        sub = st.fanout.join(user_id)  # before the history is read: nothing slips past
    except Refused as exc:
        await _refuse(websocket, exc)
        return
    try:
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept(subprotocol=subprotocol)
        await _serve_subscriber(websocket, st, sub, since)
    finally:
        st.fanout.leave(sub)


async def _refuse(websocket: WebSocket, refused: Refused) -> None:
    """An HTTP status before the handshake where the server can send one, else close code
    1013 (try again later) right after it."""
    if websocket.application_state == WebSocketState.CONNECTING and (
            "websocket.http.response" in websocket.scope.get("extensions", {})):
        await websocket.send_denial_response(
            JSONResponse({"error": str(refused)}, status_code=refused.status))
    else:
        if websocket.application_state == WebSocketState.CONNECTING:
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


async def public_health(request: Request) -> JSONResponse:
    """``{"ok": true|false}`` and nothing else: no hosts, pids or faults on the public port
    (the detailed report is on the operator listener)."""
    ok = await _state(request).health.ok()
    return JSONResponse({"ok": ok}, status_code=200 if ok else 503)


async def watch_writer(st: GatewayState) -> None:
    """Opens the breaker when no writer has shown a sign of life for the silence bound
    while intents wait (a writer killed by a signal says nothing itself)."""
    watcher = WriterSilence.from_settings(
        st.redis, st.settings, noticed_by=f"gateway {socket.gethostname()}:{os.getpid()}")
    interval_s = st.settings.writer_silence_check_interval_ms / 1000
    while True:
        await run_in_threadpool(watcher.check, now_ms())  # one look at a time, in order
        await asyncio.sleep(interval_s)


def create_apps(settings: Settings, demo: bool = False) -> tuple[Starlette, Starlette]:
    """The public app and the operator app, sharing one state (the public app runs it)."""
    routes = [
        WebSocketRoute("/ws", ws_confirmations),
        Route("/bets/{bet_id}", get_bet),
        Route("/health", public_health),
    ]
    if demo:
        from workers.gateway.demo import demo_routes

        routes += demo_routes()
    aredis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.gateway_redis_connections_max))
    state = GatewayState(settings, tokens.load_or_create_secret(settings.gateway_secret_file),
                         aredis, redis_client(settings.redis_url), FanOut(
                             settings, aredis,
                             lambda user, since: missed_since(aredis, user, since)),
                         CachedHealth(lambda: run_in_threadpool(
                             lambda: bool(health_report(state)["ok"])),
                             settings.gateway_health_cache_ms))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        defer_full_collections()
        tasks = [asyncio.create_task(state.fanout.run()),
                 asyncio.create_task(collect_fully_every(settings.gateway_gc_full_interval_s)),
                 asyncio.create_task(watch_writer(state))]
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
    return app, create_operator_app(state)
