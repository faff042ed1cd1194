"""``STRONGROOM_API_METRICS_PORT``: ``/metrics`` moves off the public port to a listener of its own.

A deployment publishes the API port (Service, Ingress); metrics stay on the port only Prometheus may reach
(the chart's NetworkPolicy opens it to the configured Prometheus namespace alone).
"""

from typing import Any

import httpx
import pytest

from tests.helpers.ports import free_port

pytestmark = pytest.mark.integration


def test_metrics_on_their_own_port_and_not_on_the_public_one(api_factory: Any) -> None:
    metrics_port = free_port()
    api = api_factory(STRONGROOM_API_METRICS_PORT=str(metrics_port))
    try:
        httpx.get(f"{api.url}/api/v1/operations", timeout=5)  # an unsigned request: counted as a 401
        assert httpx.get(f"{api.url}/metrics", timeout=5).status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert 'route="/api/v1/operations",status="401"' in scraped.text
        assert "strongroom_queue_depth 0.0" in scraped.text  # read through the API app's Redis client
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5).status_code == 404
    finally:
        code = api.stop()
    assert code == 0, api.logs()[-2000:]  # SIGTERM stops both listeners gracefully
