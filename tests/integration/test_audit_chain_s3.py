"""The audit trail end to end on real Redis and SeaweedFS: stream -> consumer group -> sealed chained batches,
verified by the function and by `strongroom audit verify`, which notices an edited or removed batch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from s3_pipeline_support import env_for, now, private_services, record

from shared import audit_log
from shared.crypto.keyring import Keyring
from shared.events import new_event, publish
from shared.settings import Settings
from worker_service.pipeline.audit import persist_audit_events
from worker_service.services import Services

pytestmark = pytest.mark.integration

KEYRING = Keyring.from_json(Keyring.generate_json("audit-k1"))


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    yield from private_services(settings, KEYRING)


def _operation_with_log(services: Services, batches: int = 3) -> str:
    op = record(created=now())
    services.records.create(op, {})
    for _ in range(batches):
        event = new_event(operation_id=op.id, actor=op.grantee, action="artifact.url", result="allowed")
        publish(services.redis, event)
        publish(services.redis, event)  # delivered twice: stored once
        assert persist_audit_events(services) == 1
    return op.id


def _verify_cli(services: Services, stack_env: dict[str, str], target: str, *extra: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "strongroom.cli.admin", "audit", "verify", target, *extra],
        env=env_for(services, stack_env, KEYRING),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout else {"stderr": done.stderr}


def test_chain_on_s3_verifies_and_holds_each_event_once(services: Services) -> None:
    op = _operation_with_log(services)
    report = audit_log.verify_chain(services.records, op)
    assert report.ok and report.batches == 3 and report.events == 3
    assert len({e.id for b in audit_log.iter_batches(services.records, op) for e in b.events}) == 3


def test_edited_batch_is_detected(services: Services) -> None:
    op = _operation_with_log(services)
    key = audit_log.batch_key(op, 2)
    doc = json.loads(services.records.get_sealed(key))
    doc["events"][0]["result"] = "denied"
    services.records.put_sealed(key, json.dumps(doc).encode())  # an insider with the keyring
    report = audit_log.verify_chain(services.records, op)
    assert not report.ok and any("batch 3 does not chain" in p for p in report.problems)


def test_removed_batch_is_detected_and_the_cli_exits_nonzero(services: Services, stack_env: dict[str, str]) -> None:
    op = _operation_with_log(services)
    code, doc = _verify_cli(services, stack_env, op)
    assert code == 0 and doc["ok"] and doc["batches"] == 3, doc
    services.store.delete(audit_log.batch_key(op, 2))
    code, doc = _verify_cli(services, stack_env, op)
    assert code == 1 and not doc["ok"], doc
    assert any("batch 2 is missing" in p for p in doc["problems"])


def test_a_rolled_back_head_is_caught_only_with_an_external_anchor(
    services: Services, stack_env: dict[str, str]
) -> None:
    """An attacker with S3 write access restores an older head and deletes the tail: the chain alone still
    verifies; the head the worker logged outside S3 (``--anchor``) shows it."""
    op = _operation_with_log(services, batches=2)
    old_head = services.store.get_bytes(audit_log.head_key(op))
    event = new_event(operation_id=op, action="artifact.url", result="allowed")
    publish(services.redis, event)
    assert persist_audit_events(services) == 1
    newest = audit_log.read_batch(services.records, op, 3)
    services.store.put_bytes(audit_log.head_key(op), old_head)
    services.store.delete(audit_log.batch_key(op, 3))

    code, doc = _verify_cli(services, stack_env, op)
    assert code == 1 and any("kept outside S3" in p for p in doc["problems"]), doc  # the head kept in Redis
    services.redis.delete(audit_log.anchor_key(op))  # Redis is not durable: without it, S3 alone cannot tell
    code, doc = _verify_cli(services, stack_env, op)
    assert code == 0 and doc["ok"], doc
    code, doc = _verify_cli(services, stack_env, op, "--anchor", f"3:{newest.digest}")
    assert code == 1 and doc["anchor_problems"], doc


def _newest(services: Services, op: str) -> audit_log.Batch:
    *_, last = audit_log.iter_batches(services.records, op)
    return last


def test_a_deleted_tail_and_head_are_not_papered_over_by_the_next_append(
    services: Services, stack_env: dict[str, str]
) -> None:
    """Issue 10 item 5: with the worker stopped, the newest batch and head.json are deleted with plain S3 deletes.
    The next append neither reuses sequence 3 nor chains to batch 2 as if nothing happened: it continues after
    the head kept in Redis with an access_log.gap event, and `audit verify` says so from then on."""
    op = _operation_with_log(services, batches=3)
    services.store.delete(audit_log.batch_key(op, 3))
    services.store.delete(audit_log.head_key(op))
    code, doc = _verify_cli(services, stack_env, op)
    assert code == 1 and any("tail removed" in p for p in doc["problems"]), doc  # seen before any append

    event = new_event(operation_id=op, action="artifact.url", result="allowed")
    publish(services.redis, event)
    assert persist_audit_events(services) == 1
    newest = _newest(services, op)
    assert newest.sequence == 4  # sequence 3 is never reused
    gap, stored = newest.events
    assert gap.action == "access_log.gap" and gap.result == "error" and "batches 3..3" in (gap.reason or "")
    assert stored.id == event.id
    assert not services.store.exists(audit_log.batch_key(op, 3))

    code, doc = _verify_cli(services, stack_env, op)
    assert code == 1 and not doc["ok"], doc
    assert any("batch 3 is missing" in p for p in doc["problems"]), doc
    assert any("batch 4 records that the log was damaged" in p for p in doc["problems"]), doc
    assert not any("does not chain" in p for p in doc["problems"]), doc  # batch 4 chains to batch 3's digest


def test_without_the_redis_head_a_deleted_head_is_still_not_papered_over(services: Services) -> None:
    """Redis lost too (it is not durable): a log with several batches and no head.json is damaged, so the next
    append records that later batches may be gone instead of continuing quietly."""
    op = _operation_with_log(services, batches=3)
    services.store.delete(audit_log.batch_key(op, 3))
    services.store.delete(audit_log.head_key(op))
    services.redis.delete(audit_log.anchor_key(op))
    publish(services.redis, new_event(operation_id=op, action="artifact.url", result="allowed"))
    assert persist_audit_events(services) == 1
    newest = _newest(services, op)
    assert newest.sequence == 3 and newest.events[0].action == "access_log.gap"
    assert "head.json is missing" in (newest.events[0].reason or "")
    report = audit_log.verify_chain(services.records, op)
    assert not report.ok and any("damaged" in p for p in report.problems), report.problems


def test_an_append_never_overwrites_a_stored_batch(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are written with If-None-Match: * (SeaweedFS honours it): an appender with a stale idea of the tail
    gets a conflict, the stored batch stays, and the events stay pending for the next call."""
    op = _operation_with_log(services, batches=2)
    before = services.store.get_bytes(audit_log.batch_key(op, 2))
    stale = audit_log.read_tail(services.records, op)
    monkeypatch.setattr(
        audit_log, "read_tail", lambda *_a, **_k: audit_log.Tail(1, stale.digest, frozenset())
    )  # as if batch 2 were not there yet (a second writer, a lagging listing)
    publish(services.redis, new_event(operation_id=op, action="artifact.url", result="allowed"))
    assert persist_audit_events(services) == 0
    assert services.store.get_bytes(audit_log.batch_key(op, 2)) == before
    monkeypatch.undo()
    assert persist_audit_events(services) == 1
    assert _newest(services, op).sequence == 3 and audit_log.verify_chain(services.records, op).ok
