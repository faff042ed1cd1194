"""The API application factory (``uvicorn --factory api_service.app:create_app``).

Nothing is built at import time: ``create_app`` reads settings (from the environment unless given) and the
lifespan builds the clients, unless a test injects ready-made ``ApiServices`` (e.g. a ``MemoryObjectStore``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from api_service.errors import exception_handlers
from api_service.metrics import ApiMetrics
from api_service.middleware import BodyLimitMiddleware, HeaderLimitMiddleware, RequestContextMiddleware
from api_service.routes import metrics_route, routes
from api_service.services import ApiServices
from shared.grants import GrantSource
from shared.runtime_limits import pin_recursion_limit
from shared.settings import Settings

SIGNATURE_HEADERS = ["Content-Digest", "Signature", "Signature-Input"]
EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "X-Request-ID",
    "X-Artifact-Checksum",
    "X-Artifact-Ciphertext-Checksum",
    "X-Artifact-Encryption",
    "Content-Range",
    "Content-Disposition",
    "Deprecation",
    "Sunset",
    "Link",
    "X-Wait-Applied",
]


def create_app(
    settings: Settings | None = None, *, services: ApiServices | None = None, grants: GrantSource | None = None
) -> Starlette:
    """Build the app. ``services`` (tests) is used as is and not closed; otherwise the lifespan owns the clients.
    ``grants``: the grant source ``strongroom api`` loaded (and checked) before serving; without it the lifespan
    loads its own.

    The interpreter's recursion limit is restored here and again at start-up, once the services (and whatever
    they import lazily) exist: see ``shared.runtime_limits``.
    """
    pin_recursion_limit()
    if settings is None:
        settings = services.settings if services is not None else Settings.from_env()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = services is None
        svc = ApiServices.from_settings(settings, grants=grants) if services is None else services
        pin_recursion_limit()
        _expose(app, svc)
        try:
            yield
        finally:
            if owned:
                await svc.aclose()

    app = Starlette(
        routes=routes(metrics=not settings.api_metrics_port),
        middleware=[
            Middleware(RequestContextMiddleware, metrics=metrics),
            Middleware(HeaderLimitMiddleware, max_count=settings.max_header_count, max_bytes=settings.max_header_bytes),
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[*SIGNATURE_HEADERS, "Content-Type", "Accept", "Range", "X-Request-ID"],
                expose_headers=EXPOSED_HEADERS,
                max_age=600,
            ),
            Middleware(BodyLimitMiddleware, limit=settings.max_input_bytes),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    # No automatic 307 from /path/ to /path: it answered before authentication, with a Location built from the
    # Host the client sent. Unknown paths, trailing slash or not, are 404 problem+json.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.metrics = metrics
    if services is not None:
        _expose(app, services)  # usable without running the lifespan (e.g. TestClient without ``with``)
    return app


def _expose(app: Starlette, svc: ApiServices) -> None:
    """What endpoints read (``services``) and what ``api_service.auth`` reads (``verifier``, ``redis``)."""
    app.state.services = svc
    app.state.verifier = svc.verifier
    app.state.redis = svc.redis


def stop_long_polls(app: Starlette) -> None:
    """The server is shutting down: every request long-polling an operation answers now (see ``long_poll``)."""
    svc = getattr(app.state, "services", None)
    if isinstance(svc, ApiServices):
        svc.stop_waiting()


def create_metrics_app(app: Starlette) -> Starlette:
    """``/metrics`` alone, for the port Prometheus scrapes (``STRONGROOM_API_METRICS_PORT``), reading ``app``'s state.

    It shares the API app's state (metrics registry, Redis client), so it must be served in the same process and
    event loop, and it has no lifespan of its own: the API app's lifespan builds and closes what both use.
    """
    metrics_app = Starlette(routes=[metrics_route()])
    metrics_app.state = app.state
    return metrics_app
