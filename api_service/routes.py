"""The route table: every URL the API answers, in one list."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from api_service.endpoints import agents, artifacts, grant, health, operations, page
from api_service.endpoints.openapi import openapi_json
from api_service.openapi import OPENAPI_PATH

OPERATION = "/api/v1/operations/{operation_id}"


def routes(*, metrics: bool = True) -> list[BaseRoute]:
    """Every route; ``metrics=False`` leaves ``/metrics`` to the separate listener (``api_service.serve``)."""
    return [
        Route("/api/v1/agents", agents.list_agents, methods=["GET"]),
        Route("/api/v1/grant", grant.get_grant, methods=["GET"]),
        Route("/api/v1/operations", operations.create_operation, methods=["POST"]),
        Route("/api/v1/operations", operations.list_operations, methods=["GET"]),
        Route(OPERATION, operations.get_operation, methods=["GET"]),
        Route(f"{OPERATION}/cancel", operations.cancel_operation, methods=["POST"]),
        Route(f"{OPERATION}/access-log", operations.access_log, methods=["GET"]),
        Route(f"{OPERATION}/artifacts", artifacts.list_artifacts, methods=["GET"]),
        Route(f"{OPERATION}/artifacts/{{name}}", artifacts.get_artifact, methods=["GET"]),
        Route(f"{OPERATION}/artifacts/{{name}}", artifacts.delete_artifact, methods=["DELETE"]),
        Route(OPENAPI_PATH, openapi_json, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        *([metrics_route()] if metrics else []),
        *page.routes,  # the browser page: static files only, unsigned (it holds no data)
    ]


def metrics_route() -> Route:
    return Route("/metrics", health.metrics, methods=["GET"])
