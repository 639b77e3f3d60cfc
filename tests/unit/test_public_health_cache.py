"""The public /health answer costs one check per interval, however many clients ask."""

from __future__ import annotations

import asyncio

from workers.gateway.operator import CachedHealth

CLIENTS = 200


def test_a_crowd_of_health_checks_costs_one_check_per_interval() -> None:
    checks = 0

    async def check() -> bool:
        nonlocal checks
        checks += 1
        await asyncio.sleep(0.01)  # a check takes time: the crowd arrives meanwhile
        return True

    async def crowd(cache: CachedHealth) -> list[bool]:
        return await asyncio.gather(*(cache.ok() for _ in range(CLIENTS)))

    cached = CachedHealth(check, max_age_ms=60_000)
    assert asyncio.run(crowd(cached)) == [True] * CLIENTS
    assert checks == 1
    uncached = CachedHealth(check, max_age_ms=0)  # no reuse: each caller checks again
    asyncio.run(crowd(uncached))
    assert checks == 1 + CLIENTS
