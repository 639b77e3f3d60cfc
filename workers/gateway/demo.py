"""Demo bet slip routes (``betstream gateway --demo`` only): a page, a session, place a bet.

The page signs nothing itself: the gateway signs with the keyring's front-end key through
the producer library, exactly as an upstream front-end service would.

Only the page this gateway serves may drive it: every demo request must name this gateway
in ``Host`` (a DNS-rebinding page names its own) and, when the browser sends an ``Origin``,
come from it; a bet must be ``application/json`` (a cross-site form cannot send that
without a pre-flight this gateway never grants). Tokens are for players only (id > 0).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from producer.client import Producer
from producer.contract import new_bet
from producer.errors import BetstreamError
from producer.signing import Keyring
from workers.adapters import subscriber_tokens as tokens
from workers.adapters.ledger_queries import market_state, user_balance
from workers.adapters.ledger_store import read_ledger
from workers.gateway.app import _state

LOCAL_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")  # the demo listens on loopback only
HTTP_DEFAULT_PORT: Final = 80  # browsers leave it out of Host and Origin


def _hosts(request: Request) -> set[str]:
    """``Host`` values that name this gateway: a loopback name and the port it serves."""
    port = (request.scope.get("server") or ("", 0))[1]
    hosts = {f"{name}:{port}" for name in LOCAL_NAMES}
    return hosts | set(LOCAL_NAMES) if port == HTTP_DEFAULT_PORT else hosts


def foreign(request: Request) -> str | None:
    """Why this request does not come from the demo page this gateway serves; None if it
    does (or from a tool that sends no Origin, such as curl)."""
    hosts = _hosts(request)
    if request.headers.get("host") not in hosts:
        return "the Host header does not name this gateway"
    origin = request.headers.get("origin")
    if origin is not None and origin not in {f"http://{host}" for host in hosts}:
        return "cross-origin requests are refused"
    return None


Handler = Callable[[Request], Awaitable[Response]]


def same_site_only(handler: Handler) -> Handler:
    async def checked(request: Request) -> Response:
        reason = foreign(request)
        if reason is not None:
            return JSONResponse({"error": reason}, status_code=403)
        return await handler(request)
    return checked


async def page(request: Request) -> HTMLResponse:
    html = resources.files("workers.gateway").joinpath("static/betslip.html").read_text()
    return HTMLResponse(html)


async def session(request: Request) -> JSONResponse:
    st = _state(request)
    try:
        user_id = int(request.query_params.get("user_id", ""))
    except ValueError:
        return JSONResponse({"error": "user_id must be an integer"}, status_code=400)
    if user_id <= 0:  # system accounts (cash, house, escrow) are not players
        return JSONResponse({"error": "user_id must be a player's (> 0)"}, status_code=400)
    token = tokens.issue(st.secret, user_id, st.settings.token_ttl_s)
    balance = await run_in_threadpool(_balance, st.settings, user_id)
    return JSONResponse({"user_id": user_id, "token": token, "balance": balance})


def _balance(settings: Any, user_id: int) -> int | None:
    return read_ledger(settings.db, settings.sqlite_busy_timeout_ms,
                       lambda conn: user_balance(conn, user_id))


async def place_bet(request: Request) -> JSONResponse:
    st = _state(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "send the bet as application/json"}, status_code=415)
    try:
        form = await request.json()
        intent = new_bet(int(form["user_id"]), int(form["stake"]), str(form["market"]),
                         str(form["selection"]), str(form["odds"]))
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": msg}, status_code=422)
    except (KeyError, ValueError, TypeError) as exc:
        return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
    producer = Producer(st.redis, Keyring.load(st.settings.keyring))
    try:
        await run_in_threadpool(producer.submit, intent)
    except BetstreamError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    return JSONResponse({"id": intent.id, "status": "pending"}, status_code=202)


async def market(request: Request) -> JSONResponse:
    """Whether the page's market takes bets (the page greys it out when not)."""
    st = _state(request)
    name = request.query_params.get("market", "")
    state = await run_in_threadpool(read_ledger, st.settings.db,
                                    st.settings.sqlite_busy_timeout_ms,
                                    lambda conn: market_state(conn, name))
    if state is None:
        return JSONResponse({"error": "the ledger cannot be read yet"}, status_code=503)
    return JSONResponse({"market": name, "state": state})


def demo_routes() -> list[Route]:
    return [
        Route("/", same_site_only(page)),
        Route("/demo/session", same_site_only(session)),
        Route("/demo/bets", same_site_only(place_bet), methods=["POST"]),
        Route("/demo/market", same_site_only(market)),
    ]
