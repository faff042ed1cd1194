"""Long polling against the real stack: `strongroom api` + `strongroom worker` subprocesses, Valkey, SeaweedFS.

The worker's record writes wake the waiting requests (``shared.status_feed``); the SDK's ``wait`` long-polls;
a wrong signer is refused before any waiting; 200 waiting requests hold no threads; and a SIGTERM answers the
waiting requests instead of cutting them off.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth.signer import sign_request
from shared.models import GetOperationResponse
from strongroom.client import StrongroomClient
from strongroom.client.identity import Identity, generate_identity
from tests.agents.harness import agents_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OPS = "/api/v1/operations"
WAITERS = 200


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {
        "STRONGROOM_AGENTS": agents_env(sleeper=["slow", "120"]),
        "STRONGROOM_RATE_LIMIT_PER_MINUTE": "0",
    }


@pytest.fixture(scope="module")
def stack(api_factory: Callable[..., Any], worker_factory: Callable[..., Any], env: dict[str, str]) -> Iterator[Any]:
    api = api_factory(**env)
    worker = worker_factory(concurrency=2, **env)
    yield api
    worker.stop()
    api.stop()


@pytest.fixture(scope="module")
def identity() -> Identity:
    return generate_identity()


class Counting(httpx.HTTPTransport):
    """The SDK's transport, remembering the status requests it sent and what they were answered."""

    def __init__(self) -> None:
        super().__init__()
        self.status: list[tuple[str | None, str | None]] = []  # (?wait=, X-Wait-Applied)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if re.fullmatch(rf"{OPS}/[^/]+", request.url.path) and request.method == "GET":
            self.status.append((request.url.params.get("wait"), response.headers.get("x-wait-applied")))
        return response


def signed_get(identity: Identity, url: str) -> dict[str, str]:
    return sign_request(identity.account, "GET", url, b"")


def started(client: StrongroomClient, agent: str = "sleeper") -> GetOperationResponse:
    """A new operation, once a worker runs it (found with the long poll itself: pending -> running)."""
    created = client.create(agent, {}, retention_days=1)
    op = client.get(created.id, wait=30)
    while op.status == "pending":
        op = client.get(created.id, wait=30)
    assert op.status == "running", op.result
    return op


def test_sdk_wait_sees_each_change_with_one_held_request(stack: Any, identity: Identity) -> None:
    transport = Counting()
    with StrongroomClient(stack.url, identity, transport=transport) as client:
        created = client.create("privacy-audit", {"text": "mail jane@example.com", "files": {}}, retention_days=1)
        seen: list[str] = []
        done = client.wait(created.id, timeout=120, on_poll=lambda o: seen.append(o.status))
    assert done.status == "succeeded", done.result
    # One held request per change the client saw (pending -> running -> succeeded, or straight to the end when
    # the worker was quicker than the first request); never a poll in between.
    assert 1 <= len(transport.status) == len(seen) <= 3
    assert all(wait is not None and applied == wait for wait, applied in transport.status)
    assert seen[-1] == "succeeded" and len(set(seen)) == len(seen)


def test_a_request_with_no_change_answers_at_its_bound(stack: Any, identity: Identity) -> None:
    with StrongroomClient(stack.url, identity) as client:
        op = started(client)
        response = httpx.get(
            f"{stack.url}{OPS}/{op.id}?wait=2", headers=signed_get(identity, f"{stack.url}{OPS}/{op.id}?wait=2")
        )
        assert response.status_code == 200
        assert response.json()["status"] == "running"
        assert response.headers["x-wait-applied"] == "2"
        client.cancel(op.id)
        assert client.wait(op.id, timeout=60).status == "cancelled"


def test_another_signer_is_refused_without_waiting(stack: Any, identity: Identity) -> None:
    """Refused before the wait: answered well within the client's timeout, far below the 30 s asked for."""
    with StrongroomClient(stack.url, identity) as client:
        op = started(client)
        stranger = generate_identity()
        url = f"{stack.url}{OPS}/{op.id}?wait=30"
        response = httpx.get(url, headers=signed_get(stranger, url), timeout=10)
        assert response.status_code == 403 and response.json()["code"] == "not_grantee"
        client.cancel(op.id)


def api_threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def waiting(api_url: str) -> int:
    metrics = httpx.get(f"{api_url}/metrics", timeout=10).text
    found = re.search(r"^strongroom_long_polls_waiting (\S+)$", metrics, re.MULTILINE)
    return int(float(found.group(1))) if found else -1


def until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        pause.wait(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def many_long_polls(url: str, identity: Identity, count: int, out: list[httpx.Response]) -> threading.Thread:
    """``count`` concurrent signed ``?wait=30`` requests, each on its own connection, from a thread of their own.

    They are sent 20 at a time, a moment apart, so what is measured is waiting, not a burst of signature checks
    queueing for the API's 100 async Redis connections; once waiting, a request holds no connection.
    """

    async def run() -> None:
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=120) as http:
            tasks = []
            for index in range(count):
                tasks.append(asyncio.ensure_future(http.get(url, headers=signed_get(identity, url))))
                if index % 20 == 19:
                    await asyncio.sleep(0.3)
            out.extend(await asyncio.gather(*tasks))

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    return thread


def test_two_hundred_waiting_requests_hold_no_threads(stack: Any, identity: Identity) -> None:
    with StrongroomClient(stack.url, identity) as client:
        op = started(client)
        url = f"{stack.url}{OPS}/{op.id}?wait=30"
        answers: list[httpx.Response] = []
        thread = many_long_polls(url, identity, WAITERS, answers)
        until(lambda: waiting(stack.url) == WAITERS, f"{WAITERS} requests to wait")
        # A thread (or a Redis connection) per waiting request would need 200; the process has its usual few.
        assert api_threads(stack.pid) < WAITERS // 2
        # The server still serves everything else, including requests that do need its worker threads.
        assert client.get(op.id).status == "running"
        assert client.artifacts(op.id).count == 0
        client.cancel(op.id)
        thread.join(timeout=120)
    assert len(answers) == WAITERS
    assert {(a.status_code, a.json()["status"]) for a in answers} == {(200, "cancelled")}
    assert waiting(stack.url) == 0


def test_sigterm_answers_waiting_requests_instead_of_cutting_them_off(
    stack: Any, api_factory: Callable[..., Any], env: dict[str, str], identity: Identity
) -> None:
    second = api_factory(**env)
    with StrongroomClient(stack.url, identity) as client:
        op = started(client)
        url = f"{second.url}{OPS}/{op.id}?wait=30"
        answers: list[httpx.Response] = []
        thread = many_long_polls(url, identity, 3, answers)
        until(lambda: waiting(second.url) == 3, "3 requests to wait")
        second.stop(timeout=20)  # SIGTERM: uvicorn's graceful shutdown (8 s) would otherwise cut them off
        thread.join(timeout=60)
        client.cancel(op.id)
    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "running")] * 3
