"""Review finding 12: a head.json rolled back to an older version, with the batches after it deleted, verifies in
S3 alone (no keyring needed: the old head is a genuine sealed object); the head each append logs (``audit_head``),
kept outside S3, exposes it through ``anchor_problems``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pipeline_support import make_record, make_services, redis_client, store_operation

from shared import audit_log
from shared.events import new_event, publish
from worker_service.pipeline import audit
from worker_service.services import Services

pytestmark = pytest.mark.unit


class RecordingLog:
    """Stands in for the module's structlog logger: keeps every call as (event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    info = warning = error = _record


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def services(client: redis.Redis) -> Services:
    return make_services(client)


def _append_one(services: Services, client: redis.Redis, op: str | None) -> None:
    publish(client, new_event(action="artifact.url", result="allowed", actor="0x" + "33" * 20, operation_id=op))
    assert audit.persist_audit_events(services, consumer="c1") == 1


def test_a_rolled_back_head_with_its_tail_deleted_is_caught_by_the_external_anchor(
    services: Services, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record()
    store_operation(services, record)
    recorder = RecordingLog()
    monkeypatch.setattr(audit, "log", recorder)
    head_key = audit_log.head_key(record.id)
    _append_one(services, client, record.id)
    _append_one(services, client, record.id)
    old_head = services.store.get_bytes(head_key)  # an earlier version, as a versioned bucket keeps it
    _append_one(services, client, record.id)

    heads = [fields for event, fields in recorder.lines if event == "audit_head"]
    assert [(h["log"], h["sequence"]) for h in heads] == [(record.id, 1), (record.id, 2), (record.id, 3)]
    anchor = heads[-1]
    assert audit.anchor_problems(services, record.id, anchor["sequence"], anchor["sha256"]) == []

    # someone with S3 write access but no keyring: the old head back, the batch after it gone
    services.store.put_bytes(head_key, old_head)
    services.store.delete(audit_log.batch_key(record.id, 3))

    report = audit_log.verify_chain(services.records, record.id)
    assert report.ok and report.batches == 2  # S3 alone cannot tell
    problems = audit.anchor_problems(services, record.id, anchor["sequence"], anchor["sha256"])
    assert problems and "batch 3" in problems[0]


def test_an_anchor_that_names_a_rewritten_batch_is_reported(services: Services, client: redis.Redis) -> None:
    _append_one(services, client, None)
    assert audit.anchor_problems(services, None, 1, "00" * 32) == [
        "batch 1 differs from the digest in the external anchor"
    ]
    assert audit.anchor_problems(services, None, 1, audit_log.read_batch(services.records, None, 1).digest) == []
