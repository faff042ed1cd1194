"""Status notifications (``shared.status_feed``): every record write is announced once it landed, the worker's
and everyone else's (a cancel of a pending operation through the API, a delete)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shared import layout
from tests.unit.worker.pipeline_support import make_record, make_services, redis_client
from worker_service.pipeline import run as pipeline

pytestmark = pytest.mark.integration  # the session's real Redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


def next_announcement(pubsub: redis.client.PubSub) -> str:
    for _ in range(200):
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            return bytes(message["data"]).decode()
    raise AssertionError("no announcement")


def test_persist_announces_after_the_record_is_written(client: redis.Redis) -> None:
    services = make_services(client)
    record = make_record(status="pending")
    services.records.put(record)
    pubsub = client.pubsub()
    pubsub.subscribe(layout.REDIS_STATUS_CHANNEL)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        pipeline.persist(services, record.evolve(status="running"))
        assert next_announcement(pubsub) == record.id
        assert services.records.get(record.id).status == "running"  # readable by the time it is announced
    finally:
        pubsub.close()


def test_fail_operation_announces(client: redis.Redis) -> None:
    services = make_services(client)
    record = make_record(status="running")
    services.records.put(record)
    pubsub = client.pubsub()
    pubsub.subscribe(layout.REDIS_STATUS_CHANNEL)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        failed = pipeline.fail_operation(services, record.id, "gave up")
        assert failed is not None and failed.status == "failed"
        assert next_announcement(pubsub) == record.id
    finally:
        pubsub.close()


def test_writes_outside_the_worker_announce_too(client: redis.Redis) -> None:
    """A pending operation cancelled through the API never reaches a worker: its waiters must still wake."""
    services = make_services(client)
    record = make_record(status="pending")
    services.records.put(record)
    pubsub = client.pubsub()
    pubsub.subscribe(layout.REDIS_STATUS_CHANNEL)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        services.records.update(record.id, lambda r: r.evolve(status="cancelled", finished_at=r.created_at))
        assert next_announcement(pubsub) == record.id
        services.records.delete_record(record.id)
        assert next_announcement(pubsub) == record.id
    finally:
        pubsub.close()
