"""``replay.admit`` on a real Valkey: nonce, rate limit and the accepted request's audit event in one script.

The script must keep every rule of the separate steps it replaced (replay not counted, nonce consumed only here,
rate limit after the nonce, no event for a refused request, fail closed) and cost one round trip.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest
import redis.asyncio as aioredis

from shared.auth.replay import admit
from shared.auth.signer import sign_request
from shared.auth.verifier import SignedRequest, Verifier
from shared.errors import AuthError, RateLimited, Unavailable
from shared.events import decode, encode, new_event
from shared.layout import REDIS_AUDIT_STREAM, redis_nonce_key, redis_rate_key, redis_record_version
from shared.records import WRITING
from shared.settings import Settings
from strongroom.dev.servers import free_port

pytestmark = pytest.mark.integration
T = TypeVar("T")
URL = "http://bench.local/api/v1/operations"


class CountingRedis(aioredis.Redis):
    """A real client that counts the commands it sends (each is one round trip outside a pipeline)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]))
        return await super().execute_command(*args, **options)


def run(redis_url: str, body: Callable[[CountingRedis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = cast(CountingRedis, CountingRedis.from_url(redis_url))
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def fresh() -> tuple[str, str, str]:
    address = "0x" + secrets.token_hex(20)
    return f"erc8128:1:{address}", secrets.token_urlsafe(16), address


async def tail(client: aioredis.Redis) -> bytes:
    newest: Any = await client.xrevrange(REDIS_AUDIT_STREAM, count=1)
    return bytes(newest[0][0]) if newest else b"0-0"


async def events_after(client: aioredis.Redis, start: bytes) -> list[Any]:
    entries: Any = await client.xrange(REDIS_AUDIT_STREAM, min=b"(" + start)
    return [decode(fields) for _, fields in entries]


async def counter(client: aioredis.Redis, key: str) -> int:
    return int(cast(bytes, await client.get(key)))


def test_accepted_request_is_one_round_trip_with_its_event(redis_url: str) -> None:
    keyid, nonce, address = fresh()
    now = time.time()
    event = new_event(action="auth", result="allowed", reason=None, actor=address, operation_id=None)

    async def body(client: CountingRedis) -> None:
        start = await tail(client)
        await admit(client, keyid=keyid, nonce=nonce, expires=int(now) + 60, address=address, rate_limit=0, now=now)
        keyid2, nonce2, _ = fresh()
        await admit(client, keyid=keyid2, nonce=nonce2, expires=int(now) + 60, address=address, rate_limit=5, now=now)
        client.commands.clear()
        keyid3, nonce3, _ = fresh()
        kwargs: dict[str, Any] = {"expires": int(now) + 60, "address": address, "rate_limit": 5, "now": now}
        await admit(client, keyid=keyid3, nonce=nonce3, audit_entry=encode(event), **kwargs)
        assert client.commands == ["EVALSHA"]
        assert [e.id for e in await events_after(client, start)] == [event.id]
        ttl = await client.ttl(redis_nonce_key(keyid3, nonce3))
        assert 60 <= ttl <= 120  # expires + 60 s - now
        window = int(now // 60)
        assert await counter(client, redis_rate_key(address, window)) == 2
        assert 0 < await client.ttl(redis_rate_key(address, window)) <= 120

    run(redis_url, body)


def test_the_operations_version_token_comes_back_in_the_same_round_trip(redis_url: str) -> None:
    """As ``shared.records.aversion``: the token standing, one created when none does, None while a write runs."""
    address, now = fresh()[2], time.time()
    operation_id = "privacy-audit_" + "v" * 26
    key = redis_record_version(operation_id)

    async def body(client: CountingRedis) -> None:
        await client.delete(key)
        kwargs: dict[str, Any] = {"expires": int(now) + 60, "address": address, "rate_limit": 0, "now": now}
        keyid, nonce, _ = fresh()
        client.commands.clear()
        created = await admit(client, keyid=keyid, nonce=nonce, operation_id=operation_id, **kwargs)
        assert client.commands == ["EVALSHA"] and created is not None
        assert await client.get(key) == created and await client.ttl(key) > 0
        keyid, nonce, _ = fresh()
        assert await admit(client, keyid=keyid, nonce=nonce, operation_id=operation_id, **kwargs) == created
        await client.set(key, WRITING)
        keyid, nonce, _ = fresh()
        assert await admit(client, keyid=keyid, nonce=nonce, operation_id=operation_id, **kwargs) is None
        with pytest.raises(AuthError, match="already been used"):  # a replay learns nothing
            await admit(client, keyid=keyid, nonce=nonce, operation_id=operation_id, **kwargs)

    run(redis_url, body)


def test_replay_is_not_counted_and_writes_no_event(redis_url: str) -> None:
    keyid, nonce, address = fresh()
    now = time.time()
    entry = encode(new_event(action="auth", result="allowed", reason=None, actor=address, operation_id=None))
    kwargs: dict[str, Any] = {"keyid": keyid, "nonce": nonce, "expires": int(now) + 60, "address": address}

    async def body(client: CountingRedis) -> None:
        await admit(client, rate_limit=10, now=now, audit_entry=entry, **kwargs)
        start = await tail(client)
        with pytest.raises(AuthError) as info:
            await admit(client, rate_limit=10, now=now, audit_entry=entry, **kwargs)
        assert info.value.code == "nonce_replayed"
        assert await events_after(client, start) == []
        assert await counter(client, redis_rate_key(address, int(now // 60))) == 1

    run(redis_url, body)


def test_over_the_rate_limit_consumes_the_nonce_and_writes_no_event(redis_url: str) -> None:
    _, _, address = fresh()
    now = time.time()
    entry = encode(new_event(action="auth", result="allowed", reason=None, actor=address, operation_id=None))

    async def body(client: CountingRedis) -> None:
        start = await tail(client)
        for _ in range(2):
            keyid, nonce, _ = fresh()
            kw: dict[str, Any] = {"expires": int(now) + 60, "address": address, "rate_limit": 2, "now": now}
            await admit(client, keyid=keyid, nonce=nonce, audit_entry=entry, **kw)
        keyid, nonce, _ = fresh()
        with pytest.raises(RateLimited) as info:
            await admit(client, keyid=keyid, nonce=nonce, audit_entry=entry, **kw)
        assert 1 <= info.value.retry_after <= 60
        assert await client.exists(redis_nonce_key(keyid, nonce))
        assert len(await events_after(client, start)) == 2

    run(redis_url, body)


def test_script_flushed_from_the_server_is_loaded_again(redis_url: str) -> None:
    _, _, address = fresh()
    now = time.time()

    async def body(client: CountingRedis) -> None:
        await client.script_flush()
        client.commands.clear()
        keyid, nonce, _ = fresh()
        await admit(client, keyid=keyid, nonce=nonce, expires=int(now) + 60, address=address, rate_limit=3, now=now)
        assert client.commands == ["EVALSHA", "EVAL"]
        client.commands.clear()
        keyid, nonce, _ = fresh()
        await admit(client, keyid=keyid, nonce=nonce, expires=int(now) + 60, address=address, rate_limit=3, now=now)
        assert client.commands == ["EVALSHA"]

    run(redis_url, body)


def test_unreachable_store_fails_closed() -> None:
    _, _, address = fresh()
    now = time.time()

    async def body(client: CountingRedis) -> None:
        keyid, nonce, _ = fresh()
        with pytest.raises(Unavailable) as info:
            await admit(client, keyid=keyid, nonce=nonce, expires=int(now) + 60, address=address, rate_limit=3, now=now)
        assert info.value.code == "nonce_store_unavailable"

    run(f"redis://127.0.0.1:{free_port()}/0", body)


def test_verifier_writes_the_callers_event_only_for_an_accepted_request(redis_url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url}, rate_limit_per_minute=100)
    key = "0x" + secrets.token_hex(32)
    body_bytes = b'{"agent":"x"}'
    headers = sign_request(key, "POST", URL, body_bytes)
    request = SignedRequest("POST", "bench.local", "/api/v1/operations", "?", headers, body_bytes)
    built: list[str] = []

    def audit(signer: Any) -> Any:
        event = new_event(action="auth", result="allowed", reason=None, actor=signer.address, operation_id=None)
        built.append(event.id)
        return event

    async def body(client: CountingRedis) -> None:
        verifier = Verifier(settings, client)
        start = await tail(client)
        client.commands.clear()
        signer = await verifier.verify(request, audit=audit)
        assert client.commands == ["EVALSHA"] or client.commands == ["EVALSHA", "EVAL"]
        with pytest.raises(AuthError):
            await verifier.verify(request, audit=audit)  # the replay: refused before any event is written
        events = await events_after(client, start)
        assert [(e.id, e.actor, e.result) for e in events] == [(built[0], signer.address, "allowed")]

    run(redis_url, body)
