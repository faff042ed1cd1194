"""The fast path of ``@signed`` (``api_service.access._prejudge``): with a cached record, the outcome's audit event
is written by the nonce's admission script, and only if the record's version token is still the cached copy's.

What must hold: the trail is event for event the one the slow path writes (``test_audit_equivalence.py`` runs both,
this file makes sure the fast path is taken); a record written elsewhere between the decision and the admission
(a cancel, a deleted artifact, an expiry, a cleanup) never yields an allowed event, a URL or an answer for the state
that changed; and an admission that cannot be written refuses the request, with nothing recorded.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from api_service import access
from shared import layout
from shared.auth.replay import admit
from shared.events import decode, encode, new_event
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from tests.integration.test_audit_equivalence import OPS, Recorder, _auth, _finished
from tests.unit.api.api_harness import ApiHarness

pytestmark = pytest.mark.integration


@pytest.fixture
def rec(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    api = ApiHarness(redis_url)
    with api.client() as client:
        recorder = Recorder(api, client, redis_url)
        recorder.slow = []  # type: ignore[attr-defined]  # events published after the admission, one per call
        real = access.apublish

        async def counted(client: Any, event: Any) -> None:
            recorder.slow.append(event.action)  # type: ignore[attr-defined]
            await real(client, event)

        monkeypatch.setattr(access, "apublish", counted)
        yield recorder


def elsewhere(api: ApiHarness) -> OperationStore:
    """Another process's view of the same records (its own cache): a worker, a beat job, another API replica."""
    return OperationStore(api.store, api.keyring, api.sync_redis)


def done_with_artifacts(rec: Recorder) -> OperationRecord:
    record = rec.api.make_record(status="succeeded", **_finished())
    rec.name(record.id, "done")
    rec.api.add_artifact(record, "a.json", b"ciphertext", plaintext=b"{}")
    return rec.api.add_artifact(record, "b.json", b"ciphertext", plaintext=b"{}")


def test_cached_reads_record_the_same_events_in_the_admission(rec: Recorder) -> None:
    """Each request twice: the first loads the record (slow path), the second decides from the cached copy and
    publishes nothing after its admission; both leave the same events."""
    api = rec.api
    record = done_with_artifacts(rec)
    past = {"created_at": utcnow() - timedelta(days=3), "expires_at": utcnow() - timedelta(days=1)}
    expired = rec.name(api.make_record(**past).id, "expired")
    artifacts = f"{OPS}/{record.id}/artifacts"
    json = {"Accept": "application/json"}
    cases: list[tuple[str, str, int, dict[str, Any]]] = [
        ("read", f"{OPS}/{record.id}", 200, {}),
        ("read-wait-finished", f"{OPS}/{record.id}?wait=5", 200, {}),
        ("list", artifacts, 200, {}),
        ("url", f"{artifacts}/a.json", 307, {}),
        ("url-json", f"{artifacts}/a.json", 200, {"headers": json}),
        ("url-missing", f"{artifacts}/nope.json", 404, {}),
        ("url-other", f"{artifacts}/a.json", 403, {"signer": api.mallory}),
        ("read-expired", f"{OPS}/{expired}", 404, {}),
        ("log-other", f"{OPS}/{record.id}/access-log", 403, {"signer": api.mallory}),
    ]
    for label, path, status, options in cases:
        assert rec.signed(f"{label}-first", "GET", path, **options) == status
        before = len(rec.slow)  # type: ignore[attr-defined]
        assert rec.signed(f"{label}-cached", "GET", path, **options) == status
        assert len(rec.slow) == before, label  # type: ignore[attr-defined]  # nothing after the admission
    events = rec.events()
    for label, *_ in cases:
        assert events[f"{label}-cached"] == events[f"{label}-first"], label
    assert events["url-json-cached"] == [
        _auth("alice", "done"),
        ("audit", "artifact.url", "allowed", "alice", "done", "a.json", None),
    ]
    assert events["url-missing-cached"][-1][-1] == "artifact_not_found"


def test_what_the_endpoint_could_still_fail_is_recorded_after_it(rec: Recorder) -> None:
    """A long poll, an invalid ``?wait=`` and a change (delete) are never decided beforehand."""
    api = rec.api
    record = api.make_record(status="running", started_at=utcnow())
    rec.name(record.id, "running")
    done = done_with_artifacts(rec)
    assert rec.signed("warm", "GET", f"{OPS}/{record.id}") == 200
    assert rec.signed("warm-done", "GET", f"{OPS}/{done.id}") == 200
    before = len(rec.slow)  # type: ignore[attr-defined]
    assert rec.signed("wait", "GET", f"{OPS}/{record.id}?wait=1") == 200
    assert rec.signed("wait-invalid", "GET", f"{OPS}/{record.id}?wait=x") == 422
    assert rec.signed("delete", "DELETE", f"{OPS}/{done.id}/artifacts/b.json") == 204
    assert rec.slow[before:] == ["operation.read", "artifact.delete"]  # type: ignore[attr-defined]
    events = rec.events()
    assert events["wait"] == [
        _auth("alice", "running"),
        ("audit", "operation.read", "allowed", "alice", "running", None, None),
    ]
    assert events["wait-invalid"] == [_auth("alice", "running")]
    deleted = ("audit", "artifact.delete", "ok", "alice", "done", "b.json", None)
    assert events["delete"] == [_auth("alice", "done"), deleted]


def cancel(record: OperationRecord) -> OperationRecord:
    return record.evolve(status="cancelled", finished_at=utcnow())


def drop_a(record: OperationRecord) -> OperationRecord:
    return record.evolve(artifacts=[a.model_dump() for a in record.artifacts if a.name != "a.json"])


def expire(record: OperationRecord) -> OperationRecord:
    return record.evolve(expires_at=utcnow() - timedelta(seconds=1))


CHANGES: dict[str, tuple[Callable[[OperationRecord], OperationRecord] | None, str, int, str | None]] = {
    # change -> the request, its status, and the reason of the only outcome event allowed (None: the new state)
    "cancel": (cancel, "status", 200, None),
    "delete-artifact": (drop_a, "url", 404, "artifact_not_found"),
    "expire": (expire, "url", 404, "expired"),
    "cleanup": (None, "url", 404, "operation_not_found"),  # None: the record is deleted
}


def _apply(store: OperationStore, record: OperationRecord, change: Callable[..., OperationRecord] | None) -> None:
    if change is None:
        store.delete_record(record.id)
    else:
        store.update(record.id, change)


def _request(rec: Recorder, label: str, record: OperationRecord, what: str) -> Any:
    path = f"{OPS}/{record.id}" if what == "status" else f"{OPS}/{record.id}/artifacts/a.json"
    headers = {"X-Request-ID": f"{rec.run}-{label}", "Accept": "application/json"}
    return rec.api.signed(rec.client, "GET", path, headers=headers)


def _check(rec: Recorder, label: str, response: Any, status: int, reason: str | None) -> None:
    assert response.status_code == status, label
    outcome = rec.events()[label][1:]
    if reason is None:  # the read is allowed, and answers the changed record
        assert response.json()["status"] == "cancelled"
        assert [(e[1], e[2]) for e in outcome] == [("operation.read", "allowed")]
    else:
        assert "url" not in response.json()
        assert [(e[2], e[6]) for e in outcome] == [("denied", reason)], label


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_write_elsewhere_before_the_request_is_never_served_from_the_cache(rec: Recorder, name: str) -> None:
    change, what, status, reason = CHANGES[name]
    record = done_with_artifacts(rec)
    assert _request(rec, "warm", record, what).status_code == 200  # cached in the API process
    _apply(elsewhere(rec.api), record, change)
    _check(rec, name, _request(rec, name, record, what), status, reason)


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_write_between_the_decision_and_the_admission_is_never_served(
    rec: Recorder, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race itself: the outcome is decided from the cached copy, then the write lands, then the admission
    runs. The decided event must not be written, and the answer must be the changed record's."""
    change, what, status, reason = CHANGES[name]
    record = done_with_artifacts(rec)
    assert _request(rec, "warm", record, what).status_code == 200
    decided: list[Any] = []
    real = access._prejudge

    def then_written(*args: Any) -> Any:
        verdict = real(*args)
        decided.append(verdict)
        _apply(elsewhere(rec.api), record, change)  # lands after the decision, before the admission
        return verdict

    monkeypatch.setattr(access, "_prejudge", then_written)
    response = _request(rec, name, record, what)
    assert decided and decided[0] is not None and decided[0].refusal is None  # it was decided: allowed
    _check(rec, name, response, status, reason)


def test_the_fast_path_fails_closed_when_the_admission_cannot_be_written(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = done_with_artifacts(rec)
    assert _request(rec, "warm", record, "url").status_code == 200

    async def down(*_: object, **__: object) -> None:
        raise sync_redis.ConnectionError("redis down")

    monkeypatch.setattr(aioredis.Redis, "evalsha", down)
    monkeypatch.setattr(aioredis.Redis, "eval", down)
    response = _request(rec, "down", record, "url")
    assert response.status_code == 503 and "url" not in response.json()
    assert rec.events().get("down", []) == [("refusals", "auth", "denied", None, None, None, "nonce_store_unavailable")]


# --- the admission script itself --------------------------------------------------------------------------


def _stream(client: sync_redis.Redis, since: bytes) -> list[str]:
    return [decode(fields).action for _, fields in client.xrange(layout.REDIS_AUDIT_STREAM, min=since)]


def test_admit_writes_the_endpoint_entry_only_at_the_expected_version(redis_url: str) -> None:
    import asyncio

    sync = sync_redis.Redis.from_url(redis_url)
    operation_id = layout.new_operation_id("privacy-audit")
    auth = encode(new_event(action="auth", result="allowed", actor="0xa"))
    read = encode(new_event(action="operation.read", result="allowed", actor="0xa", operation_id=operation_id))

    async def go(expected: bytes, rate_limit: int = 0, nonce: str | None = None) -> bytes | None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            now = utcnow().timestamp()
            return await admit(
                client,
                keyid=f"eip8128:1:0x{secrets.token_hex(20)}",
                nonce=nonce or secrets.token_hex(8),
                expires=int(now) + 60,
                address="0xa",
                rate_limit=rate_limit,
                now=now,
                audit_entry=auth,
                operation_id=operation_id,
                then=(expected, read),
            )
        finally:
            await client.aclose()

    newest = sync.xrevrange(layout.REDIS_AUDIT_STREAM, count=1)
    since = b"(" + (newest[0][0] if newest else b"0-0")
    token = asyncio.run(go(b"not-the-token"))  # a mismatch: the auth entry only
    assert token is not None and _stream(sync, since) == ["auth"]
    assert asyncio.run(go(token)) == token  # the expected version: both, in order
    assert _stream(sync, since) == ["auth", "auth", "operation.read"]
    sync.set(layout.redis_record_version(operation_id), b"writing")  # a write in flight: never the expected one
    assert asyncio.run(go(token)) is None
    assert _stream(sync, since) == ["auth", "auth", "operation.read", "auth"]
    sync.close()
