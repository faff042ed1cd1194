"""The API's endpoints in process: real app, real Redis (session Valkey), in-memory S3, real signatures.

Each test asserts what a client sees (status, problem ``code``, headers, body shape) and, where it matters, what
the server stored afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import pytest
import redis as sync_redis
from httpx import Response
from jsonschema import Draft202012Validator
from starlette.testclient import TestClient

from api_service.openapi import openapi_document
from shared import audit_log, layout
from shared.auth.signer import sign_request
from shared.cancel import CANCEL_TTL
from shared.contracts import RunOperation
from shared.events import decode, new_event
from shared.models import AuditEvent, GetOperationResponse, OperationResult, utcnow
from tests.unit.api.api_harness import ApiHarness

pytestmark = pytest.mark.integration

OPS = "/api/v1/operations"
DOCUMENT = openapi_document()


@pytest.fixture
def api(redis_url: str) -> ApiHarness:
    return ApiHarness(redis_url)


@pytest.fixture
def client(api: ApiHarness) -> Iterator[TestClient]:
    with api.client() as c:
        yield c


def create_body(api: ApiHarness, **changes: object) -> dict[str, object]:
    return {"agent": "privacy-audit", "input": {"text": "x"}, "encryption_public_key": api.public_key, **changes}


def assert_problem(response: Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()


# --- create -------------------------------------------------------------------------------------------------


def test_create_stores_pending_record_and_enqueues(api: ApiHarness, client: TestClient) -> None:
    response = api.signed(client, "POST", OPS, body=create_body(api, retention_days=2))
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "status", "created_at", "expires_at"}
    assert body["status"] == "pending" and body["id"].startswith("privacy-audit_")
    assert response.headers["location"] == f"{OPS}/{body['id']}"
    record = api.records.get(body["id"])
    assert record.grantee == api.alice.address and record.status == "pending"
    assert record.expires_at - record.created_at == timedelta(days=2)
    assert api.records.read_input(body["id"]) == {"text": "x"}
    assert api.producer.sent == [(RunOperation.TASK, {"operation_id": body["id"]})]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"agent": "no-such-agent"}, "agent_unknown"),
        ({"agent": "Bad Agent!"}, "agent_unknown"),
        ({"encryption_public_key": "not-base64"}, "encryption_public_key_invalid"),
        ({"encryption_public_key": "AAAA"}, "encryption_public_key_invalid"),
        ({"retention_days": 0}, "retention_days_invalid"),
        ({"retention_days": 8}, "retention_days_invalid"),
        ({"input": [1, 2]}, "input_invalid"),
        ({"surprise": 1}, "body_invalid"),
    ],
)
def test_create_refuses_bad_fields(api: ApiHarness, client: TestClient, changes: dict[str, object], code: str) -> None:
    assert_problem(api.signed(client, "POST", OPS, body=create_body(api, **changes)), 422, code)
    assert api.producer.sent == []


def test_create_refuses_non_json_and_oversized(redis_url: str) -> None:
    api = ApiHarness(redis_url, max_input_bytes=2048)
    with api.client() as client:
        assert_problem(api.signed(client, "POST", OPS, body=b"{not json"), 422, "body_invalid")
        big = create_body(api, input={"text": "x" * 4096})
        assert_problem(api.signed(client, "POST", OPS, body=big), 422, "input_too_large")


def test_create_marks_record_failed_when_queue_is_down(api: ApiHarness, client: TestClient) -> None:
    api.producer.fail = True
    response = api.signed(client, "POST", OPS, body=create_body(api))
    assert_problem(response, 503, "queue_unavailable")
    ids, _ = api.records.list_ids(api.alice.address)
    record = api.records.get(ids[0])
    assert record.status == "failed" and record.result is not None and record.result.status == "error"


def test_unsigned_request_is_refused(client: TestClient) -> None:
    response = client.get(f"http://testserver{OPS}")
    assert_problem(response, 401, "signature_missing")


# --- read ---------------------------------------------------------------------------------------------------


def test_get_returns_the_design_shape(api: ApiHarness, client: TestClient) -> None:
    record = api.make_record(status="succeeded")
    api.add_artifact(record, "report one.json", b"C" * 40, plaintext=b"{}")
    response = api.signed(client, "GET", f"{OPS}/{record.id}")
    assert response.status_code == 200, response.text
    body = response.json()
    GetOperationResponse.model_validate(body)
    assert "embedded_artifacts" not in body and "warnings" not in body
    assert body["artifacts"]["count"] == 1 and body["artifacts"]["total_size"] == 2
    meta = body["artifacts"]["artifacts"][0]
    assert meta["download_url"] == f"{OPS}/{record.id}/artifacts/report%20one.json"
    assert meta["encryption"]["scheme"] == "cobblestone-256"
    assert response.headers["cache-control"] == "no-store"


def test_access_decisions(api: ApiHarness, client: TestClient) -> None:
    record = api.make_record()
    assert_problem(api.signed(client, "GET", f"{OPS}/{record.id}", signer=api.mallory), 403, "not_grantee")
    unknown = layout.new_operation_id("privacy-audit")
    assert_problem(api.signed(client, "GET", f"{OPS}/{unknown}"), 404, "operation_not_found")
    assert_problem(api.signed(client, "GET", f"{OPS}/Not-An-Id"), 404, "operation_not_found")
    expired = api.make_record(created_at=utcnow() - timedelta(days=3), expires_at=utcnow() - timedelta(days=1))
    for path in ("", "/artifacts", "/access-log", "/artifacts/a.json"):
        assert_problem(api.signed(client, "GET", f"{OPS}/{expired.id}{path}"), 404, "expired")
    assert_problem(api.signed(client, "POST", f"{OPS}/{expired.id}/cancel"), 404, "expired")


def test_list_is_newest_first_paginated_and_filtered(api: ApiHarness, client: TestClient) -> None:
    base = utcnow() - timedelta(hours=1)
    made = [
        api.make_record(status=status, created_at=base + timedelta(minutes=i), expires_at=base + timedelta(days=1))
        for i, status in enumerate(["pending", "succeeded", "failed"])
    ]
    api.make_record(signer=api.mallory)
    first = api.signed(client, "GET", f"{OPS}?limit=2").json()
    assert [o["id"] for o in first["operations"]] == [made[2].id, made[1].id]
    assert first["next_cursor"]
    second = api.signed(client, "GET", f"{OPS}?limit=2&cursor={first['next_cursor']}").json()
    assert [o["id"] for o in second["operations"]] == [made[0].id] and second["next_cursor"] is None
    succeeded = api.signed(client, "GET", f"{OPS}?status=succeeded").json()
    assert [o["id"] for o in succeeded["operations"]] == [made[1].id]
    assert_problem(api.signed(client, "GET", f"{OPS}?limit=101"), 422, "limit_invalid")
    assert_problem(api.signed(client, "GET", f"{OPS}?status=done"), 422, "status_invalid")
    assert_problem(api.signed(client, "GET", f"{OPS}?cursor=../x"), 422, "cursor_invalid")


# --- cancel -------------------------------------------------------------------------------------------------


def test_cancel_follows_the_lifecycle(api: ApiHarness, client: TestClient) -> None:
    pending = api.make_record()
    response = api.signed(client, "POST", f"{OPS}/{pending.id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    cancelled = api.records.get(pending.id).result
    assert cancelled is not None and cancelled.summary == "cancelled by grantee"

    running = api.make_record(status="running", started_at=utcnow())
    response = api.signed(client, "POST", f"{OPS}/{running.id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "running"
    assert api.records.get(running.id).cancel_requested
    ttl = api.sync_redis.ttl(layout.redis_cancel_key(running.id))
    assert 0 < ttl <= CANCEL_TTL

    done = api.make_record(
        status="succeeded", finished_at=utcnow(), result=OperationResult(status="ok", summary="", execution_time=1)
    )
    assert_problem(api.signed(client, "POST", f"{OPS}/{done.id}/cancel"), 409, "operation_finished")


# --- artifacts ----------------------------------------------------------------------------------------------


def test_presigned_redirect_json_variant_and_delete(api: ApiHarness, client: TestClient) -> None:
    record = api.make_record(status="succeeded")
    stored = api.add_artifact(record, "a.json", b"ciphertext", plaintext=b"{}", embedded=True).artifacts[0]
    path = f"{OPS}/{record.id}/artifacts/a.json"

    redirect = api.signed(client, "GET", path)
    assert redirect.status_code == 307
    assert redirect.headers["location"].startswith("memory://")
    assert redirect.headers["x-artifact-checksum"].startswith("sha256:")
    assert redirect.headers["x-artifact-encryption"] == "cobblestone-256"
    assert redirect.headers["cache-control"] == "no-store"

    as_json = api.signed(client, "GET", path, headers={"Accept": "application/json"})
    assert as_json.status_code == 200
    assert set(as_json.json()) == {
        "url", "expires_at", "size", "content_type", "checksum", "ciphertext_checksum", "encryption",
    }  # fmt: skip

    listed = api.signed(client, "GET", f"{OPS}/{record.id}/artifacts").json()
    assert listed["count"] == 1 and listed["artifacts"][0]["name"] == "a.json"

    assert api.signed(client, "DELETE", path).status_code == 204
    assert len(stored.object_keys(record.id)) == 2  # the ciphertext and the embedded copy, the run's keys
    assert not any(api.store.exists(key) for key in stored.object_keys(record.id))
    assert_problem(api.signed(client, "GET", path), 404, "artifact_not_found")
    assert_problem(api.signed(client, "DELETE", path), 404, "artifact_not_found")
    assert api.signed(client, "GET", f"{OPS}/{record.id}/artifacts").json()["count"] == 0


def test_proxy_mode_streams_with_ranges(redis_url: str) -> None:
    api = ApiHarness(redis_url, delivery_mode="proxy")
    record = api.make_record(status="succeeded")
    ciphertext = bytes(range(256)) * 8
    api.add_artifact(record, "b.bin", ciphertext, plaintext=b"p")
    path = f"{OPS}/{record.id}/artifacts/b.bin"
    with api.client() as client:
        full = api.signed(client, "GET", path)
        assert full.status_code == 200 and full.content == ciphertext
        assert full.headers["content-length"] == str(len(ciphertext))
        assert full.headers["content-type"] == "application/octet-stream"
        assert full.headers["x-artifact-checksum"].startswith("sha256:")
        part = api.signed(client, "GET", path, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == ciphertext[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(ciphertext)}"
        tail = api.signed(client, "GET", path, headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == ciphertext[-5:]
        over = api.signed(client, "GET", path, headers={"Range": f"bytes={len(ciphertext)}-"})
        assert_problem(over, 416, "range_not_satisfiable")
        assert over.headers["content-range"] == f"bytes */{len(ciphertext)}"


def _audit_since(redis_url: str) -> Callable[[], list[AuditEvent]]:
    """The audit events published from now on (call the result to read them)."""
    r = sync_redis.Redis.from_url(redis_url)
    newest = r.xrevrange(layout.REDIS_AUDIT_STREAM, count=1)
    start = b"(" + (newest[0][0] if newest else b"0-0")
    return lambda: [decode(fields) for _, fields in r.xrange(layout.REDIS_AUDIT_STREAM, min=start)]


def _count_opens(api: ApiHarness) -> list[str]:
    """Record every object the store opens for reading (a proxied S3 GetObject)."""
    opened: list[str] = []
    real = api.store.open_range

    def open_range(key: str, first: int | None = None, last: int | None = None) -> Iterator[bytes]:
        opened.append(key)
        return real(key, first, last)

    api.store.open_range = open_range  # type: ignore[method-assign]
    return opened


def test_proxy_mode_json_ticket_is_not_a_download(redis_url: str) -> None:
    """Review finding 2: Accept: application/json in proxy mode answers the ticket (its url is this route), opens
    no object and records artifact.url; only the byte stream that follows records artifact.download."""
    api = ApiHarness(redis_url, delivery_mode="proxy")
    record = api.make_record(status="succeeded")
    ciphertext = bytes(range(256)) * 8
    api.add_artifact(record, "b c.bin", ciphertext, plaintext=b"p")
    path = f"{OPS}/{record.id}/artifacts/b%20c.bin"
    opened = _count_opens(api)
    events = _audit_since(redis_url)
    with api.client() as client:
        ticket = api.signed(client, "GET", path, headers={"Accept": "application/json"})
        assert ticket.status_code == 200, ticket.text
        assert ticket.headers["content-type"] == "application/json"
        assert ticket.headers["x-artifact-checksum"].startswith("sha256:")
        assert ticket.headers["cache-control"] == "no-store"
        body = ticket.json()
        assert set(body) == {
            "url", "expires_at", "size", "content_type", "checksum", "ciphertext_checksum", "encryption",
        }  # fmt: skip
        assert body["url"] == path and body["expires_at"] is None
        assert body["size"] == 1 and body["ciphertext_checksum"].startswith("sha256:")
        schema = {**DOCUMENT["components"]["schemas"]["ArtifactUrlResponse"], "components": DOCUMENT["components"]}
        assert not [e.message for e in Draft202012Validator(schema).iter_errors(body)]
        assert opened == []
        assert [(e.action, e.result) for e in events() if e.artifact == "b c.bin"] == [("artifact.url", "allowed")]

        full = api.signed(client, "GET", body["url"], headers={"Accept": "application/octet-stream"})
        assert full.status_code == 200 and full.content == ciphertext
    assert len(opened) == 1
    assert [(e.action, e.result) for e in events() if e.artifact == "b c.bin"] == [
        ("artifact.url", "allowed"),
        ("artifact.download", "allowed"),
    ]


def test_proxy_mode_head_answers_headers_without_reading_or_recording_a_download(redis_url: str) -> None:
    """Review finding 3: HEAD is the GET's headers from the object's metadata: no body, no GetObject, no
    artifact.download event; Range is ignored (RFC 9110 section 14.2); a missing object is still 404."""
    api = ApiHarness(redis_url, delivery_mode="proxy")
    record = api.make_record(status="succeeded")
    ciphertext = bytes(range(256)) * 8
    api.add_artifact(record, "b.bin", ciphertext, plaintext=b"p")
    path = f"{OPS}/{record.id}/artifacts/b.bin"
    opened = _count_opens(api)
    events = _audit_since(redis_url)
    with api.client() as client:
        get = api.signed(client, "GET", path)
        for headers in ({}, {"Range": "bytes=10-19"}):
            head = api.signed(client, "HEAD", path, headers=headers)
            assert head.status_code == 200 and head.content == b""
            for name in ("content-length", "content-type", "x-artifact-checksum", "accept-ranges"):
                assert head.headers[name] == get.headers[name], name
            assert "content-range" not in head.headers
        assert len(opened) == 1  # the GET's only
        downloads = [e for e in events() if e.action == "artifact.download"]
        assert len(downloads) == 1

        api.store.delete(opened[0])  # the object is gone, the record still names it
        assert api.signed(client, "HEAD", path).status_code == 404
    assert len(opened) == 1


@pytest.mark.parametrize("slow", ["open", "chunk"])
def test_slow_storage_in_proxy_mode_does_not_block_the_event_loop(redis_url: str, slow: str) -> None:
    """Review finding 1: opening the object (S3 GetObject, up to 60 s x 4 attempts) and every later chunk run in
    worker threads; a download stuck on storage must not stall other requests on the same uvicorn loop."""
    api = ApiHarness(redis_url, delivery_mode="proxy")
    record = api.make_record(status="succeeded")
    ciphertext = bytes(range(256)) * 8
    api.add_artifact(record, "b.bin", ciphertext, plaintext=b"p")
    path = f"{OPS}/{record.id}/artifacts/b.bin"
    stalled = threading.Event()
    real = api.store.open_range

    def open_range(key: str, first: int | None = None, last: int | None = None) -> Iterator[bytes]:
        data = b"".join(real(key, first, last))
        if slow == "open":
            stalled.set()
            time.sleep(STALL)
            return iter([data])
        return _slow_after_first(data, stalled)

    api.store.open_range = open_range  # type: ignore[method-assign]
    with api.uvicorn() as port, httpx.Client(timeout=30) as http:
        url = f"http://127.0.0.1:{port}{path}"
        result: list[httpx.Response] = []
        download = threading.Thread(
            target=lambda: result.append(http.get(url, headers=sign_request(api.alice.key, "GET", url, b"")))
        )
        download.start()
        assert stalled.wait(10)
        began = time.monotonic()
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        elapsed = time.monotonic() - began
        download.join(30)
    assert health.status_code == 200
    assert elapsed < STALL / 2, f"/healthz waited {elapsed:.2f}s behind a stalled {slow}"
    assert result and result[0].status_code == 200 and result[0].content == ciphertext


STALL = 2.0


def _slow_after_first(data: bytes, stalled: threading.Event) -> Iterator[bytes]:
    yield data[:10]
    stalled.set()
    time.sleep(STALL)
    yield data[10:]


# --- embedded-artifacts migration ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["on", "deprecated", "off"])
def test_embedded_artifact_modes(redis_url: str, mode: str) -> None:
    api = ApiHarness(redis_url, embedded_artifacts=mode, embedded_max_size=16)
    record = api.make_record(status="succeeded")
    api.add_artifact(record, "small.json", b"c1", plaintext=b'{"a": 1}', embedded=True)
    api.add_artifact(record, "big.json", b"c2", plaintext=b"x" * 32)
    with api.client() as client:
        response = api.signed(client, "GET", f"{OPS}/{record.id}")
    assert response.status_code == 200
    body = response.json()
    GetOperationResponse.model_validate(body)
    if mode == "off":
        assert "embedded_artifacts" not in body and "deprecation" not in response.headers
        return
    assert body["embedded_artifacts"] == [
        {"name": "small.json", "content_type": "application/json", "size": 8, "content_base64": "eyJhIjogMX0="}
    ]
    if mode == "on":
        assert "warnings" not in body and "deprecation" not in response.headers
        return
    assert response.headers["deprecation"].startswith("@") and response.headers["deprecation"][1:].isdigit()
    assert response.headers["sunset"] == api.settings.embedded_sunset
    assert 'rel="deprecation"' in response.headers["link"]
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("big.json")


def test_a_damaged_embedded_copy_becomes_a_warning_not_a_500(redis_url: str) -> None:
    api = ApiHarness(redis_url, embedded_artifacts="deprecated", embedded_max_size=16)
    record = api.make_record(status="succeeded")
    stored = api.add_artifact(record, "small.json", b"c1", plaintext=b'{"a": 1}', embedded=True).artifacts[0]
    key = stored.embedded_object_key(record.id)
    assert key is not None
    blob = bytearray(api.store.get_bytes(key))
    blob[-1] ^= 1  # a flipped bit in the sealed copy
    api.store.put_bytes(key, bytes(blob))
    with api.client() as client:
        response = api.signed(client, "GET", f"{OPS}/{record.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["embedded_artifacts"] == []
    assert body["warnings"] == ["small.json: the embedded copy cannot be read; download it instead"]


# --- access log, health, metrics, request ids, CORS ---------------------------------------------------------


def test_access_log_returns_events_and_chain_state(api: ApiHarness, client: TestClient) -> None:
    record = api.make_record()
    events = [new_event(action="operation.read", result="allowed", operation_id=record.id, actor=api.alice.address)]
    audit_log.append_batch(api.records, record.id, events)
    body = api.signed(client, "GET", f"{OPS}/{record.id}/access-log").json()
    assert body["chain_valid"] is True and body["batches"] == 1 and body["next_cursor"] is None
    assert [e["id"] for e in body["events"]] == [events[0].id]


def test_access_log_serves_the_bytes_the_chain_covers(api: ApiHarness, client: TestClient) -> None:
    """Issue 13: each batch's plaintext (base64), sequence, prev and digest, and the head and anchor, so a client
    recomputes the chain without trusting ``chain_valid``; the events decoded from the bytes are the page's."""
    record = api.make_record()
    for _ in range(2):
        event = new_event(action="operation.read", result="allowed", operation_id=record.id)
        batch = audit_log.append_batch(api.records, record.id, [event])
        assert batch is not None
    audit_log.write_anchor(api.sync_redis, record.id, audit_log.Head(batch.sequence, batch.digest), ttl=600)
    body = api.signed(client, "GET", f"{OPS}/{record.id}/access-log").json()
    chain = body["chain"]
    prev, decoded = audit_log.GENESIS, []
    for number, served in enumerate(chain["batches"], start=1):
        plaintext = base64.b64decode(served["plaintext"], validate=True)
        assert hashlib.sha256(plaintext).hexdigest() == served["digest"]
        assert (served["sequence"], served["prev"]) == (number, prev)
        doc = json.loads(plaintext)
        assert (doc["sequence"], doc["prev"]) == (number, prev)
        decoded += doc["events"]
        prev = served["digest"]
    assert decoded == body["events"] and len(decoded) == 2
    assert chain["head"] == chain["anchor"] == {"sequence": 2, "digest": batch.digest}
    schema = {**DOCUMENT["components"]["schemas"]["AccessLogResponse"], "components": DOCUMENT["components"]}
    assert not [e.message for e in Draft202012Validator(schema).iter_errors(body)]


def test_access_log_shows_the_grantee_a_deleted_tail_and_the_gap_the_next_append_records(
    api: ApiHarness, client: TestClient
) -> None:
    """Issue 10 item 5: the tail and head.json deleted in S3 show in ``problems`` at once (the head kept in Redis
    names the missing batch), and after the next append the gap is an event in the log itself."""
    record = api.make_record()

    def append() -> None:  # as the worker does: continue from the head kept in Redis, then move it
        anchor = audit_log.read_anchor(api.sync_redis, record.id)
        event = new_event(action="operation.read", result="allowed", operation_id=record.id)
        batch = audit_log.append_batch(api.records, record.id, [event], anchor=anchor)
        assert batch is not None
        audit_log.write_anchor(api.sync_redis, record.id, audit_log.Head(batch.sequence, batch.digest), ttl=600)

    for _ in range(3):
        append()
    api.store.delete(audit_log.batch_key(record.id, 3))
    api.store.delete(audit_log.head_key(record.id))
    body = api.signed(client, "GET", f"{OPS}/{record.id}/access-log").json()
    assert body["chain_valid"] is False and body["batches"] == 2
    assert any("batches 3..3" in p and "tail removed" in p for p in body["problems"]), body["problems"]

    append()
    body = api.signed(client, "GET", f"{OPS}/{record.id}/access-log").json()
    assert body["chain_valid"] is False
    assert [e["action"] for e in body["events"]][-2:] == ["access_log.gap", "operation.read"]
    assert any("batch 3 is missing" in p for p in body["problems"]), body["problems"]
    assert any("batch 4 records that the log was damaged" in p for p in body["problems"]), body["problems"]
    schema = {**DOCUMENT["components"]["schemas"]["AccessLogResponse"], "components": DOCUMENT["components"]}
    assert not [e.message for e in Draft202012Validator(schema).iter_errors(body)]  # the documented shape


def test_access_log_is_paginated_with_after_and_limit(api: ApiHarness, client: TestClient) -> None:
    record = api.make_record()
    written = []
    for _ in range(3):
        batch = [new_event(action="operation.read", result="allowed", operation_id=record.id) for _ in range(2)]
        audit_log.append_batch(api.records, record.id, batch)
        written += [e.id for e in batch]
    seen, cursor, pages = [], None, 0
    while True:
        query = "?limit=3" + (f"&after={cursor}" if cursor else "")
        body = api.signed(client, "GET", f"{OPS}/{record.id}/access-log{query}").json()
        assert body["chain_valid"] is True and len(body["events"]) <= 3
        seen += [e["id"] for e in body["events"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == written and pages == 3
    refused = {"?after=%C2%B2": "cursor_invalid", "?after=0": "cursor_invalid", "?after=99": "cursor_invalid"}
    refused |= {"?limit=1001": "limit_invalid", "?limit=%C2%B2": "limit_invalid"}
    for query, code in refused.items():
        assert_problem(api.signed(client, "GET", f"{OPS}/{record.id}/access-log{query}"), 422, code)


def test_only_verified_denials_name_the_operation(api: ApiHarness, client: TestClient, redis_url: str) -> None:
    """Finding 4: an unsigned request names neither actor nor operation; a verified non-grantee stays on record."""
    record = api.make_record()
    r = sync_redis.Redis.from_url(redis_url)

    def after_now(stream: str) -> bytes:
        newest = r.xrevrange(stream, count=1)
        return b"(" + (newest[0][0] if newest else b"0-0")

    start, refusals_start = after_now(layout.REDIS_AUDIT_STREAM), after_now(layout.REDIS_AUDIT_REFUSALS)
    unsigned = client.get(f"http://testserver{OPS}/{record.id}", headers={"X-Request-ID": "anon-1"})
    assert_problem(unsigned, 401, "signature_missing")
    assert_problem(api.signed(client, "GET", f"{OPS}/{record.id}", signer=api.mallory), 403, "not_grantee")
    events = [decode(fields) for _, fields in r.xrange(layout.REDIS_AUDIT_STREAM, min=start)]
    refusals = [decode(fields) for _, fields in r.xrange(layout.REDIS_AUDIT_REFUSALS, min=refusals_start)]
    anonymous = [e for e in refusals if e.request_id == "anon-1"]  # no signer proven: the refusals stream
    assert [(e.result, e.reason, e.actor, e.operation_id) for e in anonymous] == [
        ("denied", "signature_missing", None, None)
    ]
    assert not [e for e in events if e.request_id == "anon-1"]
    refused = [e for e in events if e.reason == "not_grantee"]
    assert [(e.actor, e.operation_id) for e in refused] == [(api.mallory.address, record.id)]


def test_health_ready_and_metrics(api: ApiHarness, client: TestClient, redis_url: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = sync_redis.Redis.from_url(redis_url)
    r.delete(layout.REDIS_WORKERS)
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    checks = not_ready.json()["checks"]
    assert checks["redis"]["ok"] and checks["s3"]["ok"] and not checks["worker"]["ok"]
    r.zadd(layout.REDIS_WORKERS, {"w1@test": time.time()})
    assert client.get("/readyz").status_code == 200
    r.hset(layout.REDIS_WORKER_SANDBOX, "w1@test", "bwrap: No permissions to create a new namespace")
    sandbox_down = client.get("/readyz")  # a live worker that refuses every agent: not ready, and why
    assert sandbox_down.status_code == 503
    assert sandbox_down.json()["checks"]["agent_sandbox"] == {
        "ok": False,
        "error": "a worker cannot sandbox agents: bwrap: No permissions to create a new namespace",
        "workers": 1,
    }
    r.hset(layout.REDIS_WORKER_SANDBOX, "gone@test", "old problem")  # a worker without a heartbeat: ignored
    r.hdel(layout.REDIS_WORKER_SANDBOX, "w1@test")
    assert client.get("/readyz").status_code == 200
    r.delete(layout.REDIS_WORKER_SANDBOX)
    api.store.available = False
    assert client.get("/readyz").json()["checks"]["s3"]["ok"] is False
    api.store.available = True
    r.delete(layout.REDIS_WORKERS)

    client.get(f"http://testserver{OPS}")
    text = client.get("/metrics").text
    assert 'strongroom_http_requests_total{method="GET",route="/api/v1/operations",status="401"}' in text
    assert 'strongroom_auth_failures_total{code="signature_missing"}' in text
    assert "strongroom_queue_depth" in text


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    hostile = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500 and len(hostile.headers["x-request-id"]) == 32


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/nope"), 404, "not_found")
    response = client.put("/healthz")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", OPS, "GET, HEAD, POST"),
        ("PUT", OPS, "GET, HEAD, POST"),
        ("DELETE", f"{OPS}/demo_abc", "GET, HEAD"),
        ("POST", f"{OPS}/demo_abc/artifacts/report.json", "GET, HEAD, DELETE"),
        ("OPTIONS", f"{OPS}/demo_abc/artifacts/report.json", "GET, HEAD, DELETE"),
        ("GET", f"{OPS}/demo_abc/cancel", "POST"),
    ],
)
def test_405_lists_every_method_of_the_resource(client: TestClient, method: str, path: str, allow: str) -> None:
    """RFC 9110 section 15.5.6: the Allow list is the resource's, not that of the first route on its path."""
    response = client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", [f"{OPS}/", f"{OPS}/demo_abc/artifacts/x/", "/healthz/", "/api/v1/openapi.json/"])
def test_a_trailing_slash_is_404_not_a_redirect_to_the_clients_host(client: TestClient, path: str) -> None:
    """Issue 10, item 8: no automatic slash redirect (it answered 307 to whatever Host the client sent)."""
    response = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert_problem(response, 404, "not_found")
    assert "location" not in response.headers


def test_cors_only_for_configured_origins(redis_url: str) -> None:
    api = ApiHarness(redis_url, cors_origins=("https://app.example",))
    with api.client() as client:
        preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "signature"}
        ok = client.options(f"{OPS}", headers={"Origin": "https://app.example", **preflight})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        evil = client.options(f"{OPS}", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in evil.headers


# --- numbers in headers and queries are ASCII digits only (review finding 7) -------------------------------


@pytest.mark.parametrize("limit", ["%C2%B2", "%D9%A3", "1" * 5000, "", "0", "101"])
def test_non_ascii_or_out_of_range_limit_is_422(api: ApiHarness, client: TestClient, limit: str) -> None:
    """'²' passes str.isdigit() but not int(): it used to escape as a 500; Arabic-Indic '٣' int()-parses."""
    assert_problem(api.signed(client, "GET", f"{OPS}?limit={limit}"), 422, "limit_invalid")


def test_non_ascii_range_over_a_real_socket(redis_url: str) -> None:
    """Raw bytes through uvicorn (TestClient would re-encode them): '²' in Range is ignored, never a 500."""
    api = ApiHarness(redis_url, delivery_mode="proxy")
    record = api.make_record(status="succeeded")
    ciphertext = bytes(range(100))
    api.add_artifact(record, "b.bin", ciphertext, plaintext=b"p")
    path = f"{OPS}/{record.id}/artifacts/b.bin"
    with api.uvicorn() as port:
        for malformed in (b"bytes=\xb2-", b"bytes=-\xb2", b"bytes=0-\xb2"):  # latin-1 b"\xb2" is '²'
            status, _, body = api.raw(port, "GET", path, {"Range": malformed})
            assert (status, body) == (200, ciphertext), malformed  # ignored: the whole object
        status, headers, body = api.raw(port, "GET", path, {"Range": b"bytes=90-" + b"9" * 5000})
        assert (status, body, headers["content-range"]) == (206, ciphertext[90:], "bytes 90-99/100")
        status, headers, _ = api.raw(port, "GET", path, {"Range": b"bytes=" + b"9" * 5000 + b"-"})
        assert (status, headers["content-range"]) == (416, "bytes */100")


def test_non_ascii_host_port_over_a_real_socket(redis_url: str) -> None:
    """A Host port of '²' is an authority error (401), not a 500; the same request with its real Host is fine."""
    api = ApiHarness(redis_url)
    with api.uvicorn() as port:
        for host in (b"127.0.0.1:\xb2", b"127.0.0.1:" + b"9" * 5000, b"[::1]x80"):
            status, headers, body = api.raw(port, "GET", OPS, {"Host": host})
            assert status == 401 and headers["content-type"].startswith("application/problem+json"), host
            assert json.loads(body)["code"] == "authority_not_allowed"
        status, _, body = api.raw(port, "GET", OPS, {})
        assert status == 200, body


def test_deeply_nested_json_is_422_json_too_deep(api: ApiHarness, client: TestClient) -> None:
    """Issue 10, item 1: the body is measured before it is parsed; 64 levels pass, 65 do not."""
    deep = b'{"agent":"privacy-audit","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_problem(api.signed(client, "POST", OPS, body=deep), 422, "json_too_deep")
    nested: object = {"text": "x"}
    for _ in range(62):  # the body object + input + 62 = 64 levels
        nested = {"n": nested}
    response = api.signed(client, "POST", OPS, body=create_body(api, input=nested))
    assert response.status_code == 202, response.text
    too_deep = api.signed(client, "POST", OPS, body=create_body(api, input={"n": nested}))
    assert_problem(too_deep, 422, "json_too_deep")


def test_unknown_agent_names_the_agent_and_the_available_ones(api: ApiHarness, client: TestClient) -> None:
    response = api.signed(client, "POST", OPS, body=create_body(api, agent="no-such-agent"))
    assert_problem(response, 422, "agent_unknown")
    assert response.json()["detail"] == "no agent named 'no-such-agent' on this server; available: privacy-audit"


def test_header_limits_apply_whatever_server_runs_the_app(redis_url: str) -> None:
    """The app's own check (here under TestClient): 431 problem+json, for count and for size."""
    api = ApiHarness(redis_url, max_header_count=20, max_header_bytes=4096)
    with api.client() as client:
        assert_problem(
            client.get("/healthz", headers={f"x-h{i}": "1" for i in range(30)}), 431, "request_header_fields_too_large"
        )
        assert_problem(client.get("/healthz", headers={"x-big": "a" * 5000}), 431, "request_header_fields_too_large")
        assert client.get("/healthz", headers={f"x-h{i}": "1" for i in range(5)}).status_code == 200


def test_the_served_openapi_document_is_as_strict_as_the_server(redis_url: str) -> None:
    """Issue 10, item 13: every value below is refused with 422 by the server, so it must not be schema-valid;
    the agent enum is this server's configured agents."""
    agents = json.dumps({"echo-agent": {"command": ["echo", "{prompt}"]}})
    api = ApiHarness(redis_url, agents=agents, artifact_retention_days=7)
    with api.client() as client:
        document = client.get("/api/v1/openapi.json").json()
        schemas = document["components"]["schemas"]
        create = Draft202012Validator({**schemas["CreateOperationRequest"], "$defs": schemas})
        good = create_body(api, agent="echo-agent", retention_days=7)
        assert create.is_valid(good)
        for changes in ({"agent": "nope"}, {"retention_days": 8}, {"encryption_public_key": "AAAA"}):
            assert not create.is_valid({**good, **changes}), changes
            assert api.signed(client, "POST", OPS, body={**good, **changes}).status_code == 422
        params = {p["name"]: p["schema"] for p in document["paths"][OPS]["get"]["parameters"]}
        log = f"{OPS}/{{operation_id}}/access-log"
        params |= {
            "after": next(p["schema"] for p in document["paths"][log]["get"]["parameters"] if p["name"] == "after")
        }
        for name, value in (("cursor", "not-a-cursor"), ("after", "0"), ("after", "x")):
            assert not Draft202012Validator(params[name]).is_valid(value), (name, value)
        assert api.signed(client, "GET", f"{OPS}?cursor=not-a-cursor").json()["code"] == "cursor_invalid"
