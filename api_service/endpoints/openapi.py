"""Serves the OpenAPI document (unsigned: it describes the API, it reveals nothing about operations)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api_service.openapi import openapi_document


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.settings))
