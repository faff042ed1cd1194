"""The audit trail the API writes, request by request: every allow/deny path of every signed endpoint.

The expected lists below were recorded on main before the signed endpoints moved to one declaration
(``api_service.access.signed``, issue 16); the refactor kept them, event for event. The one deliberate change
since (issue 9, item 6, marked ``# issue 9``): an ``artifact_not_found`` refusal names the artifact asked for, as
the other refusals that name an operation already did, so a refused read or delete says which name was refused.

Each request carries its own ``X-Request-ID``, so its events are picked out of both streams (the audit stream and
the refusals stream) by that id. Signers and operations are replaced by the names the scenario gave them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis as sync_redis
from starlette.testclient import TestClient

from shared import layout
from shared.events import decode
from shared.models import AuditEvent, OperationResult, utcnow
from tests.unit.api.api_harness import ORIGIN, ApiHarness, Signer

pytestmark = pytest.mark.integration

OPS = "/api/v1/operations"
Row = tuple[str, str, str, str | None, str | None, str | None, str | None]  # stream, action, result, actor, op, ...


class Recorder:
    """Sends labelled requests and reads back, per label, the events they caused in both audit streams."""

    def __init__(self, api: ApiHarness, client: TestClient, redis_url: str) -> None:
        self.api, self.client = api, client
        self.redis = sync_redis.Redis.from_url(redis_url)
        self.run = secrets.token_hex(4)
        self.start = {stream: self._after_now(stream) for stream in (layout.REDIS_AUDIT_STREAM, _REFUSALS)}
        self.names: dict[str, str] = {api.alice.address: "alice", api.mallory.address: "mallory"}

    def _after_now(self, stream: str) -> bytes:
        newest = self.redis.xrevrange(stream, count=1)
        return b"(" + (newest[0][0] if newest else b"0-0")

    def name(self, operation_id: str, label: str) -> str:
        self.names[operation_id] = label
        return operation_id

    def signed(
        self,
        label: str,
        method: str,
        path: str,
        *,
        body: object = None,
        signer: Signer | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        labelled = {"X-Request-ID": f"{self.run}-{label}", **(headers or {})}
        response = self.api.signed(self.client, method, path, body=body, signer=signer, headers=labelled)
        return int(response.status_code)

    def unsigned(self, label: str, method: str, path: str) -> int:
        response = self.client.request(method, ORIGIN + path, headers={"X-Request-ID": f"{self.run}-{label}"})
        return int(response.status_code)

    def events(self) -> dict[str, list[Row]]:
        found: dict[str, list[Row]] = {}
        for stream, start in self.start.items():
            for _, fields in self.redis.xrange(stream, min=start):
                event = decode(fields)
                prefix = f"{self.run}-"
                if event.request_id and event.request_id.startswith(prefix):
                    found.setdefault(event.request_id[len(prefix) :], []).append(self._row(stream, event))
        return found

    def _row(self, stream: str, event: AuditEvent) -> Row:
        def symbolic(value: str | None) -> str | None:
            return None if value is None else self.names.get(value, f"<unnamed {value}>")

        where = "refusals" if stream == _REFUSALS else "audit"
        actor, operation = symbolic(event.actor), symbolic(event.operation_id)
        return (where, event.action, event.result, actor, operation, event.artifact, event.reason)


_REFUSALS = layout.REDIS_AUDIT_REFUSALS


def _finished() -> dict[str, object]:
    return {"finished_at": utcnow(), "result": OperationResult(status="ok", summary="", execution_time=1)}


@pytest.fixture
def presigned(redis_url: str) -> Iterator[Recorder]:
    api = ApiHarness(redis_url)
    with api.client() as client:
        yield Recorder(api, client, redis_url)


@pytest.fixture
def proxied(redis_url: str) -> Iterator[Recorder]:
    api = ApiHarness(redis_url, delivery_mode="proxy")
    with api.client() as client:
        yield Recorder(api, client, redis_url)


def _auth(actor: str, operation: str | None = None) -> Row:
    return ("audit", "auth", "allowed", actor, operation, None, None)


def test_operation_endpoints_record_what_they_recorded_before(presigned: Recorder) -> None:
    rec, api = presigned, presigned.api
    body = {"agent": "privacy-audit", "input": {"text": "x"}, "encryption_public_key": api.public_key}
    assert rec.signed("create", "POST", OPS, body=body) == 202
    created = api.records.list_ids(api.alice.address)[0][0]
    rec.name(created, "created")
    assert rec.signed("create-invalid", "POST", OPS, body={**body, "agent": "nope"}) == 422
    api.producer.fail = True
    assert rec.signed("create-unqueued", "POST", OPS, body=body) == 503
    api.producer.fail = False
    unqueued = next(i for i in api.records.list_ids(api.alice.address)[0] if i != created)
    rec.name(unqueued, "unqueued")

    assert rec.signed("list", "GET", OPS) == 200
    assert rec.signed("list-invalid", "GET", f"{OPS}?limit=101") == 422

    pending = rec.name(api.make_record().id, "pending")
    running = rec.name(api.make_record(status="running", started_at=utcnow()).id, "running")
    done = rec.name(api.make_record(status="succeeded", **_finished()).id, "done")
    past = {"created_at": utcnow() - timedelta(days=3), "expires_at": utcnow() - timedelta(days=1)}
    expired = rec.name(api.make_record(**past).id, "expired")
    unknown = rec.name(layout.new_operation_id("privacy-audit"), "unknown")

    assert rec.signed("read", "GET", f"{OPS}/{done}") == 200
    assert rec.signed("read-other", "GET", f"{OPS}/{done}", signer=api.mallory) == 403
    assert rec.signed("read-unknown", "GET", f"{OPS}/{unknown}") == 404
    assert rec.signed("read-malformed", "GET", f"{OPS}/Not-An-Id") == 404
    assert rec.signed("read-expired", "GET", f"{OPS}/{expired}") == 404
    assert rec.unsigned("read-unsigned", "GET", f"{OPS}/{done}") == 401

    assert rec.signed("cancel-pending", "POST", f"{OPS}/{pending}/cancel") == 202
    assert rec.signed("cancel-running", "POST", f"{OPS}/{running}/cancel") == 202
    assert rec.signed("cancel-running-again", "POST", f"{OPS}/{running}/cancel") == 202
    assert rec.signed("cancel-done", "POST", f"{OPS}/{done}/cancel") == 409
    assert rec.signed("cancel-other", "POST", f"{OPS}/{pending}/cancel", signer=api.mallory) == 403
    assert rec.signed("cancel-expired", "POST", f"{OPS}/{expired}/cancel") == 404

    assert rec.signed("log", "GET", f"{OPS}/{done}/access-log") == 200
    assert rec.signed("log-bad-cursor", "GET", f"{OPS}/{done}/access-log?after=0") == 422
    assert rec.signed("log-other", "GET", f"{OPS}/{done}/access-log", signer=api.mallory) == 403
    assert rec.signed("log-malformed", "GET", f"{OPS}/Not-An-Id/access-log") == 404

    assert rec.events() == {
        "create": [_auth("alice"), ("audit", "operation.create", "ok", "alice", "created", None, None)],
        "create-invalid": [_auth("alice")],
        "create-unqueued": [
            _auth("alice"),
            ("audit", "operation.create", "error", "alice", "unqueued", None, "queue_unavailable"),
        ],
        "list": [_auth("alice"), ("audit", "operation.list", "allowed", "alice", None, None, None)],
        "list-invalid": [_auth("alice")],
        "read": [_auth("alice", "done"), ("audit", "operation.read", "allowed", "alice", "done", None, None)],
        "read-other": [
            _auth("mallory", "done"),
            ("audit", "operation.read", "denied", "mallory", "done", None, "not_grantee"),
        ],
        "read-unknown": [
            _auth("alice", "unknown"),
            ("audit", "operation.read", "denied", "alice", "unknown", None, "operation_not_found"),
        ],
        "read-malformed": [
            _auth("alice"),
            ("audit", "operation.read", "denied", "alice", None, None, "operation_not_found"),
        ],
        "read-expired": [
            _auth("alice", "expired"),
            ("audit", "operation.read", "denied", "alice", "expired", None, "expired"),
        ],
        "read-unsigned": [("refusals", "auth", "denied", None, None, None, "signature_missing")],
        "cancel-pending": [
            _auth("alice", "pending"),
            ("audit", "operation.cancel", "ok", "alice", "pending", None, None),
        ],
        "cancel-running": [
            _auth("alice", "running"),
            ("audit", "operation.cancel", "ok", "alice", "running", None, None),
        ],
        "cancel-running-again": [
            _auth("alice", "running"),
            ("audit", "operation.cancel", "ok", "alice", "running", None, None),
        ],
        "cancel-done": [
            _auth("alice", "done"),
            ("audit", "operation.cancel", "denied", "alice", "done", None, "operation_finished"),
        ],
        "cancel-other": [
            _auth("mallory", "pending"),
            ("audit", "operation.cancel", "denied", "mallory", "pending", None, "not_grantee"),
        ],
        "cancel-expired": [
            _auth("alice", "expired"),
            ("audit", "operation.cancel", "denied", "alice", "expired", None, "expired"),
        ],
        "log": [_auth("alice", "done"), ("audit", "access_log.read", "allowed", "alice", "done", None, None)],
        "log-bad-cursor": [_auth("alice", "done")],
        "log-other": [
            _auth("mallory", "done"),
            ("audit", "access_log.read", "denied", "mallory", "done", None, "not_grantee"),
        ],
        "log-malformed": [
            _auth("alice"),
            ("audit", "access_log.read", "denied", "alice", None, None, "operation_not_found"),
        ],
    }


def test_presigned_artifact_endpoints_record_what_they_recorded_before(presigned: Recorder) -> None:
    rec, api = presigned, presigned.api
    record = api.make_record(status="succeeded", **_finished())
    done = rec.name(record.id, "done")
    api.add_artifact(record, "a.json", b"ciphertext", plaintext=b"{}")
    api.add_artifact(record, "b.json", b"ciphertext", plaintext=b"{}")
    unknown = rec.name(layout.new_operation_id("privacy-audit"), "unknown")
    artifacts = f"{OPS}/{done}/artifacts"

    assert rec.signed("list", "GET", artifacts) == 200
    assert rec.signed("list-other", "GET", artifacts, signer=api.mallory) == 403
    assert rec.signed("url", "GET", f"{artifacts}/a.json") == 307
    assert rec.signed("url-json", "GET", f"{artifacts}/a.json", headers={"Accept": "application/json"}) == 200
    assert rec.signed("url-missing", "GET", f"{artifacts}/nope.json") == 404
    assert rec.signed("url-other", "GET", f"{artifacts}/a.json", signer=api.mallory) == 403
    assert rec.signed("url-unknown-op", "GET", f"{OPS}/{unknown}/artifacts/a.json") == 404
    assert rec.signed("url-malformed-op", "GET", f"{OPS}/Not-An-Id/artifacts/a.json") == 404
    assert rec.signed("delete-other", "DELETE", f"{artifacts}/b.json", signer=api.mallory) == 403
    assert rec.signed("delete", "DELETE", f"{artifacts}/b.json") == 204
    assert rec.signed("delete-missing", "DELETE", f"{artifacts}/b.json") == 404

    assert rec.events() == {
        "list": [_auth("alice", "done"), ("audit", "artifact.list", "allowed", "alice", "done", None, None)],
        "list-other": [
            _auth("mallory", "done"),
            ("audit", "artifact.list", "denied", "mallory", "done", None, "not_grantee"),
        ],
        "url": [_auth("alice", "done"), ("audit", "artifact.url", "allowed", "alice", "done", "a.json", None)],
        "url-json": [_auth("alice", "done"), ("audit", "artifact.url", "allowed", "alice", "done", "a.json", None)],
        "url-missing": [
            _auth("alice", "done"),
            ("audit", "artifact.url", "denied", "alice", "done", "nope.json", "artifact_not_found"),  # issue 9
        ],
        "url-other": [
            _auth("mallory", "done"),
            ("audit", "artifact.url", "denied", "mallory", "done", "a.json", "not_grantee"),
        ],
        "url-unknown-op": [
            _auth("alice", "unknown"),
            ("audit", "artifact.url", "denied", "alice", "unknown", "a.json", "operation_not_found"),
        ],
        "url-malformed-op": [
            _auth("alice"),
            ("audit", "artifact.url", "denied", "alice", None, None, "operation_not_found"),
        ],
        "delete-other": [
            _auth("mallory", "done"),
            ("audit", "artifact.delete", "denied", "mallory", "done", "b.json", "not_grantee"),
        ],
        "delete": [_auth("alice", "done"), ("audit", "artifact.delete", "ok", "alice", "done", "b.json", None)],
        "delete-missing": [
            _auth("alice", "done"),
            ("audit", "artifact.delete", "denied", "alice", "done", "b.json", "artifact_not_found"),  # issue 9
        ],
    }


def test_proxied_artifact_endpoints_record_what_they_recorded_before(proxied: Recorder) -> None:
    rec, api = proxied, proxied.api
    record = api.make_record(status="succeeded", **_finished())
    done = rec.name(record.id, "done")
    api.add_artifact(record, "a.bin", bytes(range(256)), plaintext=b"p")
    stored = api.add_artifact(record, "gone.bin", b"ciphertext", plaintext=b"p").artifact("gone.bin")
    assert stored is not None
    api.store.delete(stored.object_key(record.id))  # the record names an object that is not there
    artifacts = f"{OPS}/{done}/artifacts"

    assert rec.signed("download", "GET", f"{artifacts}/a.bin") == 200
    assert rec.signed("download-range", "GET", f"{artifacts}/a.bin", headers={"Range": "bytes=1-2"}) == 206
    assert rec.signed("download-bad-range", "GET", f"{artifacts}/a.bin", headers={"Range": "bytes=999-"}) == 416
    assert rec.signed("download-gone", "GET", f"{artifacts}/gone.bin") == 404
    assert rec.signed("download-missing", "GET", f"{artifacts}/nope.bin") == 404
    assert rec.signed("download-other", "GET", f"{artifacts}/a.bin", signer=api.mallory) == 403
    assert rec.signed("head", "HEAD", f"{artifacts}/a.bin") == 200
    assert rec.signed("head-gone", "HEAD", f"{artifacts}/gone.bin") == 404
    assert rec.signed("ticket", "GET", f"{artifacts}/a.bin", headers={"Accept": "application/json"}) == 200

    assert rec.events() == {
        "download": [
            _auth("alice", "done"),
            ("audit", "artifact.download", "allowed", "alice", "done", "a.bin", None),
        ],
        "download-range": [
            _auth("alice", "done"),
            ("audit", "artifact.download", "allowed", "alice", "done", "a.bin", None),
        ],
        "download-bad-range": [_auth("alice", "done")],
        "download-gone": [_auth("alice", "done")],
        "download-missing": [
            _auth("alice", "done"),
            ("audit", "artifact.download", "denied", "alice", "done", "nope.bin", "artifact_not_found"),  # issue 9
        ],
        "download-other": [
            _auth("mallory", "done"),
            ("audit", "artifact.download", "denied", "mallory", "done", "a.bin", "not_grantee"),
        ],
        "head": [_auth("alice", "done"), ("audit", "artifact.list", "allowed", "alice", "done", "a.bin", None)],
        "head-gone": [_auth("alice", "done")],
        "ticket": [_auth("alice", "done"), ("audit", "artifact.url", "allowed", "alice", "done", "a.bin", None)],
    }


def test_an_access_that_cannot_be_recorded_is_refused_and_its_download_released(
    proxied: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: the allowed event is written before the response leaves; when it cannot be, the answer is
    503 ``audit_unavailable`` and the proxied download's open object is closed, though no byte was sent."""
    rec, api = proxied, proxied.api
    record = api.make_record(status="succeeded", **_finished())
    api.add_artifact(record, "a.bin", bytes(range(256)), plaintext=b"p")
    closed: list[str] = []
    opened: list[Iterator[bytes]] = []  # held here, so only an explicit close (not garbage collection) closes them
    real = api.store.open_range

    def body(key: str, first: int | None, last: int | None) -> Iterator[bytes]:
        try:
            yield from real(key, first, last)
        finally:
            closed.append(key)

    def open_range(key: str, first: int | None = None, last: int | None = None) -> Iterator[bytes]:
        opened.append(body(key, first, last))
        return opened[-1]

    async def unavailable(*_: object) -> None:
        raise sync_redis.ConnectionError("audit stream down")

    api.store.open_range = open_range  # type: ignore[method-assign]
    monkeypatch.setattr("api_service.access.apublish", unavailable)
    response = api.signed(rec.client, "GET", f"{OPS}/{record.id}/artifacts/a.bin")
    assert response.status_code == 503 and response.json()["code"] == "audit_unavailable"
    assert len(opened) == 1 and len(closed) == 1
