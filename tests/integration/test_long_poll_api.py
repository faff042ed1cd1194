"""``GET /operations/{id}?wait=`` in process: the real app and its status subscriber, real Redis (session Valkey),
in-memory S3. The record changes here are made the way the worker makes them (``worker_service.pipeline.run``'s
``persist``: the record, then the notification).

The subscriber's own periodic re-check is set far beyond each test's timeout, so a request that comes back with
a new status was woken by the notification, not by re-checking.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis as sync_redis
from starlette.applications import Starlette
from starlette.testclient import TestClient

from api_service.app import create_app, stop_long_polls
from api_service.long_poll import Read, StatusWaits
from api_service.services import ApiServices
from shared import layout
from shared.events import decode
from shared.models import AuditEvent, OperationRecord
from tests.unit.api.api_harness import ApiHarness

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OPS = "/api/v1/operations"
NEVER = 3600.0  # the waiters' own re-check interval: longer than any test here


class CountingWaits(StatusWaits):
    """The real subscriber, counting the requests that began to wait and the record reads made for them."""

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.started = 0
        self.reads = 0

    async def wait(self, operation_id: str, seen: str, read: Read, bound: float) -> OperationRecord:
        self.started += 1

        async def counted() -> OperationRecord:
            self.reads += 1
            return await read()

        return await super().wait(operation_id, seen, counted, bound)


@pytest.fixture
def api(redis_url: str) -> ApiHarness:
    return ApiHarness(redis_url)


@pytest.fixture
def services(api: ApiHarness) -> ApiServices:
    svc = api.services()
    svc._waits = CountingWaits(svc.redis, recheck=NEVER)
    return svc


@pytest.fixture
def app(services: ApiServices) -> Starlette:
    return create_app(services=services)


@pytest.fixture
def client(app: Starlette, services: ApiServices) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
        c.portal.call(services.waits.aclose)  # the subscriber lives in this client's event loop


def waits(services: ApiServices) -> CountingWaits:
    found = services.waits
    assert isinstance(found, CountingWaits)
    return found


def write(api: ApiHarness, record: OperationRecord, **changes: Any) -> OperationRecord:
    """What the worker's ``persist`` does: write the record (which announces it)."""
    changed = record.evolve(**changes)
    api.records.put(changed)
    return changed


def in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


@pytest.mark.parametrize("raw", ["abc", "-1", "31", "1.5", "", "1e1", "%C2%B2", "100", "%205", "5%00"])
def test_a_wait_that_is_not_0_to_30_whole_seconds_is_422_naming_it(
    api: ApiHarness, client: TestClient, services: ApiServices, raw: str
) -> None:
    record = api.make_record()
    response = api.signed(client, "GET", f"{OPS}/{record.id}?wait={raw}")
    assert_problem(response, 422, "wait_invalid")
    assert "wait" in response.json()["detail"]
    assert waits(services).started == 0


def test_a_finished_operation_answers_at_once_and_says_the_wait_applied(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record(status="succeeded")
    response = api.signed(client, "GET", f"{OPS}/{record.id}?wait=30")
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.headers["x-wait-applied"] == "30"
    assert waits(services).started == 0
    plain = api.signed(client, "GET", f"{OPS}/{record.id}")
    assert "x-wait-applied" not in plain.headers and plain.json() == response.json()


def test_wait_0_does_not_wait(api: ApiHarness, client: TestClient, services: ApiServices) -> None:
    record = api.make_record()
    response = api.signed(client, "GET", f"{OPS}/{record.id}?wait=0")
    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert response.headers["x-wait-applied"] == "0"
    assert waits(services).started == 0


def test_a_waiting_request_answers_when_the_status_changes(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record()
    thread, answers = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1, "the request to wait")
    running = write(api, record, status="running")
    thread.join(timeout=60)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["status"] == "running"
    assert answers[0].headers["x-wait-applied"] == "30"
    assert waits(services).waiting == 0
    # The next long poll waits for the next change: running -> succeeded.
    thread, answers = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1, "the second request to wait")
    write(api, running, status="succeeded")
    thread.join(timeout=60)
    assert answers[0].json()["status"] == "succeeded"


def test_a_write_that_keeps_the_status_does_not_end_the_wait(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    """Woken, the request re-reads and goes on waiting: only a different status (or the bound) answers."""
    record = api.make_record(status="running")
    thread, answers = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1 and waits(services).reads == 1, "the request to wait")
    flagged = write(api, record, cancel_requested=True)
    until(lambda: waits(services).reads == 2, "the re-read the notification causes")
    assert thread.is_alive() and not answers and waits(services).waiting == 1
    write(api, flagged, status="cancelled")
    thread.join(timeout=60)
    assert answers[0].json()["status"] == "cancelled"


def test_a_wait_with_no_change_answers_at_its_bound_unchanged(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record(status="running")
    response = api.signed(client, "GET", f"{OPS}/{record.id}?wait=1")
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert response.headers["x-wait-applied"] == "1"
    assert waits(services).started == 1


def test_another_signer_is_refused_before_any_waiting(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record(status="running")
    response = api.signed(client, "GET", f"{OPS}/{record.id}?wait=30", signer=api.mallory)
    assert_problem(response, 403, "not_grantee")
    unknown = api.signed(client, "GET", f"{OPS}/{layout.new_operation_id('privacy-audit')}?wait=30")
    assert_problem(unknown, 404, "operation_not_found")
    unsigned = client.get(f"{OPS}/{record.id}?wait=30")
    assert unsigned.status_code == 401
    assert waits(services).started == 0


def test_a_long_poll_is_one_read_in_the_access_log_recorded_with_its_answer(
    api: ApiHarness, client: TestClient, services: ApiServices, redis_url: str
) -> None:
    record = api.make_record()
    since = _audit_since(redis_url)
    thread, _ = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1, "the request to wait")
    reads = [e for e in since() if e.action == "operation.read"]
    assert reads == []  # not before the answer
    write(api, record, status="running")
    thread.join(timeout=60)
    reads = [e for e in since() if e.action == "operation.read"]
    assert [(e.result, e.operation_id, e.actor) for e in reads] == [("allowed", record.id, api.alice.address)]


def test_many_waiters_of_one_operation_all_answer_on_one_change_sharing_reads(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record(status="running")
    answers = [in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))[1] for _ in range(20)]
    until(lambda: waits(services).waiting == 20, "20 requests to wait")
    reads = waits(services).reads
    write(api, record, status="succeeded")
    until(lambda: all(answers), "every answer")
    assert {each[0].json()["status"] for each in answers} == {"succeeded"}
    assert waits(services).reads - reads < 20  # the woken waiters shared their re-reads


def test_an_operation_deleted_while_waited_on_is_404(
    api: ApiHarness, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record(status="running")
    thread, answers = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1, "the request to wait")
    api.records.delete_record(record.id)  # announced by the delete itself
    thread.join(timeout=60)
    assert_problem(answers[0], 404, "operation_not_found")


def test_shutdown_answers_every_waiting_request_at_once(
    api: ApiHarness, app: Starlette, client: TestClient, services: ApiServices
) -> None:
    record = api.make_record(status="running")
    thread, answers = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1, "the request to wait")
    stop_long_polls(app)  # what ``strongroom api`` does when its shutdown begins
    thread.join(timeout=60)
    assert answers[0].status_code == 200 and answers[0].json()["status"] == "running"
    later = api.signed(client, "GET", f"{OPS}/{record.id}?wait=30")  # and nothing waits from now on
    assert later.status_code == 200 and later.json()["status"] == "running"


def test_waiting_survives_a_lost_subscription(api: ApiHarness, client: TestClient, services: ApiServices) -> None:
    """Redis drops the subscriber's connection: it subscribes again and the change is still seen."""
    record = api.make_record(status="running")
    thread, answers = in_background(lambda: api.signed(client, "GET", f"{OPS}/{record.id}?wait=30"))
    until(lambda: waits(services).waiting == 1, "the request to wait")
    admin = sync_redis.Redis.from_url(api.settings.redis_url)

    def subscribers() -> int:
        return int(admin.pubsub_numsub(layout.REDIS_STATUS_CHANNEL)[0][1])

    until(lambda: subscribers() >= 1, "the subscription")
    before = subscribers()
    for connection in admin.client_list():
        if int(connection.get("sub", 0)) > 0:
            admin.client_kill_filter(_id=connection["id"])
    until(lambda: subscribers() == before, "the subscriptions to come back")
    write(api, record, status="succeeded")
    thread.join(timeout=60)
    assert answers[0].json()["status"] == "succeeded"
    admin.close()


def _audit_since(redis_url: str) -> Callable[[], list[AuditEvent]]:
    r = sync_redis.Redis.from_url(redis_url)
    newest = r.xrevrange(layout.REDIS_AUDIT_STREAM, count=1)
    start = b"(" + (newest[0][0] if newest else b"0-0")
    return lambda: [decode(fields) for _, fields in r.xrange(layout.REDIS_AUDIT_STREAM, min=start)]
