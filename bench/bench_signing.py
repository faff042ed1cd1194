"""Signed-request cost, measured in one run: verifier-only verifications per second on one core, and the
throughput of the same Starlette handler with and without ``api_service.auth.authenticate`` on a real Valkey.
The signed figure is taken twice: with the per-address rate limit off (the historical figure) and on, as in
production (set high enough that the benchmark's single signer is never refused).

The ratio is the figure that matters (it does not depend on how fast this machine is). The HTTP comparison runs
in-process through httpx's ASGI transport (one core, no sockets), because the full API also needs S3 and a
keyring; it measures what the signature adds to a request, which is the question.

    .venv/bin/python bench/bench_signing.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api_service.auth import authenticate
from api_service.errors import exception_handlers
from shared.auth.signer import sign_request
from shared.auth.verifier import SignedRequest, Verifier
from shared.settings import Settings
from strongroom.dev.servers import ValkeyServer

KEY = "0x" + "42" * 32
URL = "http://bench.local/api/v1/operations"
RATE_LIMIT_ON = 1_000_000_000  # on, so every request pays for it, but never reached by one signer


class MemoryNonces:
    """SET NX in a dict: isolates the CPU cost of verification from Redis round-trips."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    async def set(self, key: str, value: bytes, *, nx: bool, ex: int) -> bool | None:
        if key in self.keys:
            return None
        self.keys.add(key)
        return True


def _signed(n: int, created: int) -> list[SignedRequest]:
    body = b'{"agent":"privacy-audit"}'
    out = []
    for _ in range(n):
        headers = sign_request(KEY, "POST", URL, body, created=created)
        out.append(SignedRequest("POST", "bench.local", "/api/v1/operations", "?", headers, body))
    return out


async def _rate(seconds: float, batch: Callable[[], Awaitable[int]]) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count = await batch()
        if not count:  # pre-signed requests used up: this machine is faster than the pool assumed
            break
        done += count
    return done / (time.perf_counter() - start)


async def verifier_only(settings: Settings, redis: Any, seconds: float) -> float:
    now = int(time.time())
    verifier = Verifier(settings, redis, clock=lambda: now)
    pool = _signed(int(seconds * 10_000), now)  # signed up front: only verification is timed

    async def batch() -> int:
        chunk = [pool.pop() for _ in range(min(50, len(pool)))]
        for request in chunk:
            await verifier.verify(request)
        return len(chunk)

    return await _rate(seconds, batch)


def _app(settings: Settings) -> Starlette:
    async def signed(request: Request) -> JSONResponse:
        signer = await authenticate(request)
        return JSONResponse({"address": signer.address})

    async def unsigned(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"address": None})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        app.state.settings = settings
        app.state.redis = aioredis.Redis.from_url(settings.redis_url)
        app.state.verifier = Verifier(settings, app.state.redis)
        yield
        await app.state.redis.aclose()

    routes = [Route("/api/v1/operations", signed, methods=["POST"]), Route("/unsigned", unsigned, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers())


async def http_rates(settings: Settings, seconds: float) -> tuple[float, float, float]:
    """Unsigned, signed without and signed with the rate limit: the same client, handler and Valkey."""
    unsigned, signed = await http_pair(settings, seconds)
    limited = dataclasses.replace(settings, rate_limit_per_minute=RATE_LIMIT_ON)
    _, signed_limited = await http_pair(limited, seconds, unsigned=False)
    return unsigned, signed, signed_limited


async def http_pair(settings: Settings, seconds: float, *, unsigned: bool = True) -> tuple[float, float]:
    """(unsigned, signed) requests/s; the unsigned figure is 0 when ``unsigned`` is false."""
    app = _app(settings)
    body = b'{"agent":"privacy-audit"}'
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench.local") as client:

            async def plain() -> int:
                for _ in range(20):
                    response = await client.post("/unsigned", content=body)
                    assert response.status_code == 200
                return 20

            pool = _signed(int(seconds * 5_000), int(time.time()))

            async def signed() -> int:
                chunk = [pool.pop().headers for _ in range(min(20, len(pool)))]
                for headers in chunk:
                    response = await client.post("/api/v1/operations", content=body, headers=dict(headers))
                    assert response.status_code == 200, response.text
                return len(chunk)

            return (await _rate(seconds, plain) if unsigned else 0.0), await _rate(seconds, signed)


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        valkey = ValkeyServer(Path(tmp), persistent=False).start()
        try:
            settings = Settings.from_env({"REDIS_URL": valkey.url}, rate_limit_per_minute=0)
            cpu = await verifier_only(settings, MemoryNonces(), seconds)
            redis = aioredis.Redis.from_url(valkey.url)
            with_redis = await verifier_only(settings, redis, seconds)
            await redis.aclose()
            unsigned, signed, signed_limited = await http_rates(settings, seconds)
        finally:
            valkey.stop()
    print(f"verifier only, in-memory nonces : {cpu:8.0f} verifications/s/core")
    print(f"verifier only, Valkey nonces    : {with_redis:8.0f} verifications/s/core")
    print(f"HTTP unsigned (same handler)    : {unsigned:8.0f} requests/s")
    print(f"HTTP signed (authenticate)      : {signed:8.0f} requests/s")
    print(f"signed / unsigned               : {signed / unsigned:8.2f}")
    print(f"HTTP signed, rate limit on      : {signed_limited:8.0f} requests/s")
    print(f"signed (rate limit) / unsigned  : {signed_limited / unsigned:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measurement time per figure")
    asyncio.run(main(parser.parse_args().seconds))
