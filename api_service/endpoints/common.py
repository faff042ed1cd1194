"""What every endpoint shares: the services, blocking calls off the event loop, uncached JSON answers.

The access decision and its audit trail are declared, not written here: see ``api_service.access.signed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api_service.services import ApiServices

T = TypeVar("T")


def services(request: Request) -> ApiServices:
    svc: ApiServices = request.app.state.services
    return svc


async def blocking(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (boto3, sync Redis, Celery) off the event loop."""
    return await anyio.to_thread.run_sync(func, *args)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """An uncached JSON answer; ``body`` as bytes is JSON rendered beforehand (``views.render_json``)."""
    headers = {"Cache-Control": "no-store", **(headers or {})}
    if isinstance(body, bytes):
        return Response(body, status_code=status, headers=headers, media_type="application/json")
    return JSONResponse(body, status_code=status, headers=headers)
