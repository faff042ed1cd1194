"""Redis locks fail closed: busy or unreachable means Unavailable, never an unprotected write."""

import threading

import pytest
import redis

from shared.errors import Unavailable
from shared.locks import redis_lock

pytestmark = pytest.mark.integration  # a real Redis


def test_a_held_lock_makes_the_second_writer_wait_then_give_up(redis_connection: redis.Redis) -> None:
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with redis_lock(redis_connection, "strongroom:test:lock", timeout=10, wait=1, busy_code="busy_test"):
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(5)
    with (
        pytest.raises(Unavailable) as info,
        redis_lock(redis_connection, "strongroom:test:lock", timeout=10, wait=0.2, busy_code="busy_test"),
    ):
        pass
    assert info.value.code == "busy_test"
    release.set()
    thread.join()
    with redis_lock(redis_connection, "strongroom:test:lock", timeout=10, wait=1, busy_code="busy_test"):
        pass  # free again once released


def test_unreachable_redis_is_unavailable() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(Unavailable) as info, redis_lock(dead, "k", timeout=1, wait=0.1, busy_code="x"):
        pass
    assert info.value.code == "redis_unavailable"
