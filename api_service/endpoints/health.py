"""Unsigned probes and metrics. ``/healthz`` says the process serves; ``/readyz`` says it can do useful work
(Redis, S3, at least one worker heartbeat in the last minute, and no live worker that cannot sandbox agents), with
one JSON entry per check."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api_service.endpoints.common import blocking, services
from api_service.metrics import CONTENT_TYPE_LATEST
from shared import layout
from shared.contracts import QUEUE

WORKER_HEARTBEAT_MAX_AGE = 60


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    checks: dict[str, dict[str, Any]] = {}
    try:
        await svc.redis.ping()
        checks["redis"] = {"ok": True}
    except Exception as exc:  # any failure means "not ready"; the type is enough to debug, never the message
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    try:
        await blocking(svc.store.ping)
        checks["s3"] = {"ok": True}
    except Exception as exc:
        checks["s3"] = {"ok": False, "error": type(exc).__name__}
    checks["worker"] = await _worker_check(request)
    checks["agent_sandbox"] = await _sandbox_check(request)
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def _worker_check(request: Request) -> dict[str, Any]:
    try:
        alive = await services(request).redis.zcount(
            layout.REDIS_WORKERS, time.time() - WORKER_HEARTBEAT_MAX_AGE, "+inf"
        )
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    if not alive:
        return {"ok": False, "error": f"no worker heartbeat in {WORKER_HEARTBEAT_MAX_AGE} s", "workers": 0}
    return {"ok": True, "workers": int(alive)}


async def _sandbox_check(request: Request) -> dict[str, Any]:
    """Live workers that reported they cannot create the agent sandbox (they refuse every run), with the reason."""
    redis = services(request).redis
    try:
        problems = await redis.hgetall(layout.REDIS_WORKER_SANDBOX)
        live = await redis.zrangebyscore(layout.REDIS_WORKERS, time.time() - WORKER_HEARTBEAT_MAX_AGE, "+inf")
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    names = {_text(name) for name in live if isinstance(name, bytes | str)}
    reasons = sorted({_text(reason) for name, reason in problems.items() if _text(name) in names})
    if reasons:
        return {"ok": False, "error": "a worker cannot sandbox agents: " + reasons[0], "workers": len(reasons)}
    return {"ok": True}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def metrics(request: Request) -> Response:
    state = request.app.state
    try:
        state.metrics.queue_depth.set(await services(request).redis.llen(QUEUE))
    except Exception:
        state.metrics.queue_depth.set(-1)
    svc = getattr(state, "services", None)  # None before the lifespan built them (a scrape on the metrics port)
    state.metrics.long_polls.set(0 if svc is None else svc.waits.waiting)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
