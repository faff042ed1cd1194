"""The worker serves its Prometheus metrics when a port is configured."""

from typing import Any

import httpx
import pytest

from strongroom.dev.servers import wait_for
from tests.helpers.ports import free_port

pytestmark = pytest.mark.integration


def test_worker_exposes_metrics_on_the_configured_port(worker_factory: Any) -> None:
    port = free_port()
    worker = worker_factory(STRONGROOM_WORKER_METRICS_PORT=str(port))
    scraped: list[str] = []

    def scrape() -> bool:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        except httpx.HTTPError:
            return False
        scraped.append(response.text)
        return response.status_code == 200

    try:
        wait_for(scrape, timeout=30, what="worker metrics")
        assert "strongroom_worker_redis_up 1.0" in scraped[-1]
    finally:
        worker.stop()
