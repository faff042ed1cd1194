"""The worker's status notifications (``shared.status_feed``): every record write of a run is announced after it
landed, and a Redis that cannot take the announcement never fails the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shared import layout
from shared.status_feed import announce
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


def test_an_announcement_redis_cannot_take_is_logged_not_raised() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    announce(dead, "privacy-audit_" + "a" * 26)  # no exception
