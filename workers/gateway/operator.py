"""The gateway's operator listener: ``/health`` in detail and ``/metrics``.

It listens apart from the public port (``--ops-host``/``--ops-port``, loopback by default):
the detailed health names hosts, pids and faults, and both answers cost Redis and ledger
reads that a crowd of anonymous clients must not be able to trigger. The public port keeps
a minimal, cached ``/health`` (:class:`CachedHealth`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.adapters.breaker_store import BreakerStore
from workers.adapters.confirmer_health import confirmer_health
from workers.adapters.writer_health import writer_health
from workers.gateway.prometheus import registry_for

if TYPE_CHECKING:
    from workers.gateway.app import GatewayState


def health_report(st: GatewayState) -> dict[str, Any]:
    """Redis, the writer, the confirmer, this gateway and the breaker; ``ok`` when a
    confirmation can get from the stream to a subscriber."""
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
    b = BreakerStore(st.redis, st.settings.breaker_limits).load().breaker
    return {"state": b.state, "reason": b.reason, "since_ms": b.since_ms, "forced": b.forced}


class CachedHealth:
    """``ok`` of the health report, checked at most once per ``max_age_ms``: concurrent
    callers wait for the one check in flight instead of starting their own."""

    def __init__(self, check: Callable[[], Awaitable[bool]], max_age_ms: int) -> None:
        self._check = check
        self._max_age_s = max_age_ms / 1000
        self._ok = False
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def ok(self) -> bool:
        if self._fresh():
            return self._ok
        async with self._lock:
            if not self._fresh():  # nobody refreshed it while we waited
                self._ok = await self._check()
                self._at = time.monotonic()
        return self._ok

    def _fresh(self) -> bool:
        return time.monotonic() - self._at < self._max_age_s


def _state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def detailed_health(request: Request) -> JSONResponse:
    report = await run_in_threadpool(health_report, _state(request))
    return JSONResponse(report, status_code=200 if report["ok"] else 503)


async def metrics(request: Request) -> Response:
    st = _state(request)
    body = await run_in_threadpool(lambda: generate_latest(registry_for(st.redis)))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_operator_app(state: GatewayState) -> Starlette:
    app = Starlette(routes=[Route("/health", detailed_health), Route("/metrics", metrics)])
    app.state.gateway = state
    return app
