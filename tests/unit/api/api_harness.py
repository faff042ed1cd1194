"""An in-process API for tests: the real app, real Redis (the session Valkey), an in-memory object store.

Only the task producer is a recording double (the API's one-method ``TaskProducer`` seam); everything the
endpoints touch (signatures, nonces, records, sealing, audit stream) is the production code.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis
from eth_account import Account
from starlette.testclient import TestClient

from api_service.app import create_app
from api_service.services import ApiServices
from shared import layout
from shared.auth.signer import sign_request
from shared.auth.verifier import Verifier
from shared.crypto.keyring import Keyring
from shared.crypto.keywrap import generate_encryption_keypair
from shared.models import Encryption, OperationRecord, StoredArtifact, WrappedKey, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from tests.helpers.raw_http import exchange

ORIGIN = "http://testserver"


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = False

    def send(self, task: str, kwargs: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((task, kwargs))


class Signer:
    def __init__(self) -> None:
        self.key = "0x" + secrets.token_hex(32)
        self.address = Account.from_key(self.key).address.lower()


class ApiHarness:
    def __init__(self, redis_url: str, **overrides: Any) -> None:
        overrides.setdefault("rate_limit_per_minute", 0)
        env = {"REDIS_URL": redis_url, "STRONGROOM_KEYRING": Keyring.generate_json()}
        self.settings = Settings.from_env(env, **overrides)
        self.store = MemoryObjectStore()
        self.keyring = Keyring.from_json(env["STRONGROOM_KEYRING"])
        self.sync_redis = sync_redis.Redis.from_url(redis_url)
        self.records = OperationStore(self.store, self.keyring, self.sync_redis)
        self.producer = RecordingProducer()
        self.alice = Signer()
        self.mallory = Signer()
        self.secret, self.public_key = generate_encryption_keypair()

    @contextmanager
    def client(self) -> Iterator[TestClient]:
        """A fresh async Redis per client: its connections belong to the TestClient's event loop."""
        with TestClient(create_app(services=self.services()), raise_server_exceptions=False) as client:
            yield client

    @contextmanager
    def uvicorn(self) -> Iterator[int]:
        """The same app under a real uvicorn (httptools) on 127.0.0.1, for requests TestClient would re-encode.

        Yields the port; the server stops when the block ends.
        """
        import uvicorn

        from strongroom.dev.servers import free_port

        port = free_port()
        config = uvicorn.Config(
            create_app(services=self.services()), host="127.0.0.1", port=port, log_level="warning", http="httptools"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield port
        finally:
            server.should_exit = True
            thread.join(timeout=10)

    def services(self) -> ApiServices:
        async_redis = aioredis.Redis.from_url(self.settings.redis_url)
        return ApiServices(
            settings=self.settings,
            redis=async_redis,
            store=self.store,
            keyring=self.keyring,
            records=self.records,
            verifier=Verifier(self.settings, async_redis),
            producer=self.producer,
            sync_redis=self.sync_redis,
        )

    def signed(
        self,
        client: TestClient,
        method: str,
        path: str,
        *,
        body: Any = None,
        signer: Signer | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        url = ORIGIN + path
        signed = sign_request((signer or self.alice).key, method, url, raw)
        all_headers = {**signed, **(headers or {})}
        if raw:
            all_headers.setdefault("Content-Type", "application/json")
        return client.request(method, url, content=raw, headers=all_headers, follow_redirects=False)

    def raw(
        self, port: int, method: str, target: str, headers: dict[str, bytes], *, signer: Signer | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send exactly these header bytes over a socket (signed for ``http://127.0.0.1:<port><target>``).

        Returns status, lowercase headers and body; the server must close or send Content-Length.
        """
        signed = sign_request((signer or self.alice).key, method, f"http://127.0.0.1:{port}{target}", b"")
        fields = {"Host": f"127.0.0.1:{port}".encode(), **{k: v.encode() for k, v in signed.items()}, **headers}
        head = f"{method} {target} HTTP/1.1\r\n".encode()
        head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in fields.items())
        return exchange(port, head, timeout=10)

    # --- stored state ---------------------------------------------------------------------------------------

    def make_record(self, *, signer: Signer | None = None, status: str = "pending", **changes: Any) -> OperationRecord:
        now = utcnow()
        record = OperationRecord(
            id=layout.new_operation_id("privacy-audit"),
            agent="privacy-audit",
            grantee=(signer or self.alice).address,
            encryption_public_key=self.public_key,
            created_at=now,
            expires_at=now + timedelta(days=1),
        )
        record = record.evolve(status=status, **changes)
        self.records.create(record, {"text": "hello"})
        return record

    def add_artifact(
        self, record: OperationRecord, name: str, ciphertext: bytes, *, plaintext: bytes = b"", embedded: bool = False
    ) -> OperationRecord:
        """Store an artifact object the way the worker does (its run's keys, object first, record last)."""
        run_id = layout.new_run_id()
        self.store.put_bytes(layout.artifact_key(record.id, name, run_id), ciphertext)
        if embedded:
            self.records.put_sealed(layout.embedded_key(record.id, name, run_id), plaintext)
        artifact = StoredArtifact(
            name=name,
            size=len(plaintext),
            content_type="application/json",
            created_at=utcnow(),
            checksum="sha256:" + hashlib.sha256(plaintext).hexdigest(),
            ciphertext_checksum="sha256:" + hashlib.sha256(ciphertext).hexdigest(),
            ciphertext_size=len(ciphertext),
            encryption=Encryption(
                wrapped_key=WrappedKey(
                    version="x25519-xsalsa20-poly1305", nonce="bm9uY2U=", ephemPublicKey="cGs=", ciphertext="Y3Q="
                )
            ),
            embedded=embedded,
            run_id=run_id,
        )
        return self.records.update(record.id, lambda r: r.evolve(artifacts=[*r.model_dump()["artifacts"], artifact]))
