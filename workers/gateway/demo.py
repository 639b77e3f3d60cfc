"""Demo bet slip routes (``betstream gateway --demo`` only): a page, a session, place a bet.

The page signs nothing itself: the gateway signs with the keyring's front-end key through
the producer library, exactly as an upstream front-end service would.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from producer.client import Producer
from producer.contract import new_bet
from producer.errors import BetstreamError
from producer.signing import Keyring
from workers.adapters import subscriber_tokens as tokens
from workers.adapters.ledger_queries import user_balance
from workers.adapters.ledger_store import read_ledger
from workers.gateway.app import _state


async def page(request: Request) -> HTMLResponse:
    html = resources.files("workers.gateway").joinpath("static/betslip.html").read_text()
    return HTMLResponse(html)


async def session(request: Request) -> JSONResponse:
    st = _state(request)
    try:
        user_id = int(request.query_params.get("user_id", ""))
    except ValueError:
        return JSONResponse({"error": "user_id must be an integer"}, status_code=400)
    token = tokens.issue(st.secret, user_id, st.settings.token_ttl_s)
    balance = await run_in_threadpool(_balance, st.settings, user_id)
    return JSONResponse({"user_id": user_id, "token": token, "balance": balance})


def _balance(settings: Any, user_id: int) -> int | None:
    return read_ledger(settings.db, settings.sqlite_busy_timeout_ms,
                       lambda conn: user_balance(conn, user_id))


async def place_bet(request: Request) -> JSONResponse:
    st = _state(request)
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


def demo_routes() -> list[Route]:
    return [
        Route("/", page),
        Route("/demo/session", session),
        Route("/demo/bets", place_bet, methods=["POST"]),
    ]
