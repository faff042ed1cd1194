"""Serving the API: uvicorn on the public port and, when ``STRONGROOM_API_METRICS_PORT`` is set, ``/metrics`` on a
port of its own, so the public port (and whatever routes to it: Service, Ingress) never exposes metrics.

Both servers run in one process and one event loop (the metrics app reads the API app's state). This module owns
SIGTERM/SIGINT: the first stops both gracefully, a second forces them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from api_service.app import create_metrics_app, stop_long_polls
from api_service.http_protocol import header_limited_protocol
from shared.settings import Settings

_COMMON: dict[str, Any] = {
    "loop": "uvloop",
    "log_config": None,  # our structlog handler on the root logger formats uvicorn's lines too
    "access_log": False,  # the API's middleware logs each request with its request id
    "proxy_headers": False,  # forwarded headers are honoured only from STRONGROOM_TRUSTED_PROXIES, in the app
    "server_header": False,
}


class _ApiServer(uvicorn.Server):
    """A uvicorn server that, as its shutdown begins, has the app answer its long polls (``?wait=``) at once: they
    would otherwise hold the graceful-shutdown window open and then be cut off without an answer."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        if isinstance(app, Starlette):
            stop_long_polls(app)
        await super().shutdown(sockets)


class _Server(_ApiServer):
    """A uvicorn server that leaves signal handling to ``serve`` (two servers cannot both own SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(app: Starlette, settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; returns after a graceful shutdown of every listener.

    Both listeners use httptools with the header limits (``STRONGROOM_MAX_HEADER_COUNT``/``_BYTES``): 431 at the
    protocol, before the app.
    """
    common = {**_COMMON, "http": header_limited_protocol(settings)}
    api = uvicorn.Config(app, host=settings.api_host, port=settings.api_port, timeout_graceful_shutdown=8, **common)
    if not settings.api_metrics_port:
        _ApiServer(api).run()
        return
    metrics = uvicorn.Config(
        create_metrics_app(app),
        host=settings.api_host,
        port=settings.api_metrics_port,
        lifespan="off",  # the API app's lifespan builds and closes the clients both apps use
        timeout_graceful_shutdown=2,
        **common,
    )
    with asyncio.Runner(loop_factory=api.get_loop_factory()) as runner:
        runner.run(_serve_both(_Server(api), _Server(metrics)))


async def _serve_both(api: uvicorn.Server, metrics: uvicorn.Server) -> None:
    servers = (api, metrics)

    def on_signal() -> None:
        for server in servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # A scrape before the API app's lifespan has built its clients reports the queue depth as -1, nothing worse.
    api_task = asyncio.create_task(api.serve())
    metrics_task = asyncio.create_task(metrics.serve())
    try:
        await api_task
    finally:
        metrics.should_exit = True
        await metrics_task
