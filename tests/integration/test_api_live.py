"""The API as deployed: `strongroom api` (uvicorn) + a real Celery worker + SeaweedFS S3 + Valkey.

One operation goes the whole way: signed create, the worker runs privacy-audit, the grantee reads status,
follows the presigned 307 to S3, checks the ciphertext checksum, unwraps the data key, decrypts and checks the
plaintext checksum; then deletes an artifact and reads the access log. Proxy delivery is checked the same way.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account

from api_service.services import CeleryProducer
from shared.auth.signer import sign_request
from shared.contracts import PERSIST_AUDIT
from shared.crypto.cobblestone import artifact_context, decrypt_stream
from shared.crypto.keywrap import generate_encryption_keypair, unwrap_data_key
from shared.settings import Settings

pytestmark = pytest.mark.integration

TEXT = "Contact jane.doe@example.com or call +1 415 555 0100.\nAWS key AKIAIOSFODNN7EXAMPLE\n"


class Client:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.key = "0x" + secrets.token_hex(32)
        self.address = Account.from_key(self.key).address.lower()
        self.secret, self.public_key = generate_encryption_keypair()
        self.http = httpx.Client(timeout=10)

    def request(self, method: str, path: str, body: bytes = b"", **headers: str) -> httpx.Response:
        url = self.base_url + path
        signed = sign_request(self.key, method, url, body)
        return self.http.request(method, url, content=body, headers={**signed, **headers}, follow_redirects=False)

    def create(self) -> str:
        import json

        body = {"agent": "privacy-audit", "input": {"text": TEXT}, "encryption_public_key": self.public_key}
        response = self.request(
            "POST", "/api/v1/operations", json.dumps(body).encode(), **{"Content-Type": "application/json"}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait(self, operation_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.request("GET", f"/api/v1/operations/{operation_id}").json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
            time.sleep(0.3)
        raise AssertionError(f"operation {operation_id} did not finish")

    def decrypt(self, operation_id: str, meta: dict[str, Any], ciphertext: bytes) -> bytes:
        unwrapped = unwrap_data_key(self.secret, meta["encryption"]["wrapped_key"], operation_id, meta["name"])
        ctx = artifact_context(operation_id, meta["name"])
        return b"".join(decrypt_stream(unwrapped.data_key, ctx, [ciphertext]))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def finished(api_url: str, celery_worker: object) -> Iterator[tuple[Client, str, dict[str, Any]]]:
    client = Client(api_url)
    operation_id = client.create()
    yield client, operation_id, client.wait(operation_id)
    client.http.close()


def test_operation_runs_and_artifacts_download_and_decrypt(finished: tuple[Client, str, dict[str, Any]]) -> None:
    client, operation_id, body = finished
    assert body["status"] == "succeeded", body
    assert body["result"]["status"] == "ok" and body["started_at"] and body["finished_at"]
    artifacts = body["artifacts"]["artifacts"]
    assert body["artifacts"]["count"] == len(artifacts) >= 1
    for meta in artifacts:
        redirect = client.request("GET", meta["download_url"])
        assert redirect.status_code == 307
        assert redirect.headers["x-artifact-checksum"] == meta["checksum"]
        s3 = client.http.get(redirect.headers["location"])
        assert s3.status_code == 200, s3.text
        assert sha256(s3.content) == meta["ciphertext_checksum"]
        plaintext = client.decrypt(operation_id, meta, s3.content)
        assert sha256(plaintext) == meta["checksum"] and len(plaintext) == meta["size"]


def test_other_signers_are_refused(finished: tuple[Client, str, dict[str, Any]], api_url: str) -> None:
    _, operation_id, body = finished
    stranger = Client(api_url)
    for path in ("", "/artifacts", "/access-log", f"/artifacts/{body['artifacts']['artifacts'][0]['name']}"):
        response = stranger.request("GET", f"/api/v1/operations/{operation_id}{path}")
        assert response.status_code == 403 and response.json()["code"] == "not_grantee"
    mine = stranger.request("GET", "/api/v1/operations").json()
    assert mine == {"operations": [], "next_cursor": None}


def test_delete_then_access_log(finished: tuple[Client, str, dict[str, Any]], settings: Settings) -> None:
    client, operation_id, body = finished
    victim = body["artifacts"]["artifacts"][0]
    assert client.request("DELETE", victim["download_url"]).status_code == 204
    assert client.request("GET", victim["download_url"]).status_code == 404
    remaining = client.request("GET", f"/api/v1/operations/{operation_id}/artifacts").json()
    assert victim["name"] not in [a["name"] for a in remaining["artifacts"]]

    producer = CeleryProducer(settings)  # what beat does every few seconds: persist the audit stream
    deadline = time.monotonic() + 30
    actions: set[str] = set()
    while time.monotonic() < deadline and "artifact.delete" not in actions:
        producer.send(PERSIST_AUDIT, {})
        log = client.request("GET", f"/api/v1/operations/{operation_id}/access-log").json()
        actions = {event["action"] for event in log["events"]}
        time.sleep(1)
    producer.close()
    assert log["chain_valid"] is True and log["batches"] >= 1
    assert {"operation.create", "artifact.url", "artifact.delete"} <= actions


def test_proxy_delivery_streams_ciphertext_with_ranges(
    api_factory: Callable[..., Any], finished: tuple[Client, str, dict[str, Any]]
) -> None:
    client, operation_id, _ = finished
    proxy = api_factory(STRONGROOM_DELIVERY_MODE="proxy")
    client.base_url = proxy.url
    try:
        meta = client.request("GET", f"/api/v1/operations/{operation_id}/artifacts").json()["artifacts"][0]
        full = client.request("GET", meta["download_url"])
        assert full.status_code == 200 and sha256(full.content) == meta["ciphertext_checksum"]
        assert full.headers["content-length"] == str(len(full.content))
        part = client.request("GET", meta["download_url"], Range="bytes=5-")
        assert part.status_code == 206 and part.content == full.content[5:]
        assert sha256(client.decrypt(operation_id, meta, full.content)) == meta["checksum"]
        # JSON preferred: the ticket, naming this same route (fetched with a signed GET); no bytes
        ticket = client.request("GET", meta["download_url"], Accept="application/json")
        assert ticket.status_code == 200 and ticket.headers["content-type"] == "application/json"
        assert ticket.json()["url"] == meta["download_url"] and ticket.json()["expires_at"] is None
        assert ticket.json()["ciphertext_checksum"] == meta["ciphertext_checksum"]
        # HEAD: the GET's headers from S3 HeadObject, no body
        head = client.request("HEAD", meta["download_url"])
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(full.content))
        assert head.headers["x-artifact-checksum"] == meta["checksum"]
    finally:
        proxy.stop()
