"""Prometheus metrics of one API process, in a registry of its own (so several apps can live in one test run).

Labels are bounded on purpose: routes are templates (``/api/v1/operations/{operation_id}``), never raw paths,
and auth failures are labelled by error ``code``, never by address.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

UNMATCHED_ROUTE = "<unmatched>"

__all__ = ["CONTENT_TYPE_LATEST", "UNMATCHED_ROUTE", "ApiMetrics"]


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "strongroom_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "strongroom_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "strongroom_auth_failures", "Refused signed requests by error code.", ["code"], registry=self.registry
        )
        self.urls_minted = Counter(
            "strongroom_download_urls_minted",
            "Artifact downloads handed out, by delivery (redirect, json, proxy).",
            ["delivery"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "strongroom_queue_depth",
            "Messages waiting in the worker queue (LLEN of the Celery list in Redis); -1 when unknown.",
            registry=self.registry,
        )
        self.long_polls = Gauge(
            "strongroom_long_polls_waiting",
            "Requests of this process held by GET /operations/{id}?wait= right now (each holds no thread).",
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route, method=method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
