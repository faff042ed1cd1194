"""An in-memory strongroom API and S3 for SDK unit tests, served through ``httpx.MockTransport``.

It follows issue 6's contract with real cryptography (Cobblestone payloads, MetaMask key wraps) and really checks
every request's ERC-8128 signature, digest and nonce, so the SDK is tested against the rules, not a stub.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

from shared.auth.base import RequestParts, normalize_authority, signature_base
from shared.auth.headers import parse_signature
from shared.auth.verifier import check_content_digest
from shared.crypto import cobblestone, keywrap
from shared.errors import StrongroomError

API = "http://api.test"
S3 = "http://s3.test"
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-31T00:00:00Z"


@dataclass
class FakeArtifact:
    name: str
    plaintext: bytes
    ciphertext: bytes
    wrapped_key: dict[str, str]
    content_type: str = "text/plain"

    @property
    def checksum(self) -> str:
        return "sha256:" + hashlib.sha256(self.plaintext).hexdigest()

    @property
    def ciphertext_checksum(self) -> str:
        return "sha256:" + hashlib.sha256(self.ciphertext).hexdigest()

    def metadata(self, op_id: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": len(self.plaintext),
            "content_type": self.content_type,
            "created_at": NOW,
            "download_url": f"/api/v1/operations/{op_id}/artifacts/{self.name}",
            "checksum": self.checksum,
            "ciphertext_checksum": self.ciphertext_checksum,
            "encryption": {"scheme": "cobblestone-256", "wrapped_key": self.wrapped_key},
        }


@dataclass
class FakeOperation:
    id: str
    grantee: str
    public_key: str
    status: str = "pending"
    artifacts: dict[str, FakeArtifact] = field(default_factory=dict)
    polls_until_done: int = 0
    summary: str = "done"
    changes: list[str] = field(default_factory=list)  # long poll: the status each held ?wait= request ends with

    def body(self) -> dict[str, Any]:
        arts = [a.metadata(self.id) for a in self.artifacts.values()]
        done = self.status in ("succeeded", "failed", "cancelled")
        return {
            "id": self.id,
            "status": self.status,
            "created_at": NOW,
            "expires_at": LATER,
            "started_at": NOW if self.status != "pending" else None,
            "finished_at": NOW if done else None,
            "result": {"status": "ok", "summary": self.summary, "execution_time": 1.5, "logs": []} if done else None,
            "artifacts": {"count": len(arts), "total_size": sum(a["size"] for a in arts), "artifacts": arts},
        }


class FakeApi:
    """Route table over in-memory state; ``fail_next`` queues canned error answers before normal handling."""

    def __init__(
        self, *, proxy: bool = False, proxy_tickets: bool = True, s3: str = S3, long_poll: bool = False
    ) -> None:
        self.s3 = s3  # where presigned URLs point
        self.long_poll = long_poll  # False: an older API that ignores ?wait=
        self.waits: list[int] = []  # the ?wait= values of the requests it held
        self.proxy_tickets = proxy_tickets  # False: an older proxy-mode API that streams even when JSON is preferred
        self.operations: dict[str, FakeOperation] = {}
        self.nonces: set[str] = set()
        self.fail_next: list[httpx.Response] = []
        self.requests: list[httpx.Request] = []
        self.s3_objects: dict[str, bytes] = {}
        self.s3_truncate_once: int | None = None  # serve only this many bytes on the next S3 GET
        self.proxy = proxy
        self.downloads = 0  # proxy mode: byte streams the API served (what the real API audits as downloads)
        self.events: list[dict[str, Any]] = []
        self.chain_valid = True

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # --- set-up helpers ---

    def add_operation(self, op_id: str, grantee: str, public_key: str, **kwargs: Any) -> FakeOperation:
        op = FakeOperation(op_id, grantee.lower(), public_key, **kwargs)
        self.operations[op_id] = op
        return op

    def add_artifact(self, op: FakeOperation, name: str, plaintext: bytes) -> FakeArtifact:
        key = os.urandom(32)
        out = io.BytesIO()
        cobblestone.encrypt_file(key, cobblestone.artifact_context(op.id, name), io.BytesIO(plaintext), out)
        wrap = keywrap.wrap_data_key(op.public_key, op.id, name, key, hashlib.sha256(plaintext).hexdigest())
        artifact = FakeArtifact(name, plaintext, out.getvalue(), wrap)
        op.artifacts[name] = artifact
        self.s3_objects[f"{op.id}/{name}"] = artifact.ciphertext
        return artifact

    # --- transport ---

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url).startswith(self.s3 + "/"):
            return self._s3(request)
        if self.fail_next:
            return self.fail_next.pop(0)
        try:
            signer = self._verify(request)
            return self._route(request, signer)
        except StrongroomError as exc:
            return problem(exc.status, exc.code, exc.detail)

    def _verify(self, request: httpx.Request) -> str:
        headers = {k.lower(): v for k, v in request.headers.items()}
        parsed = parse_signature(headers)
        check_content_digest(headers.get("content-digest"), request.content)
        if parsed.nonce in self.nonces:
            raise StrongroomError("nonce seen", code="nonce_replayed")
        raw_path = request.url.raw_path.decode()
        path, _, query = raw_path.partition("?")
        parts = RequestParts(
            request.method,
            normalize_authority(request.url.netloc.decode(), request.url.scheme),
            path,
            f"?{query}",
            headers,
        )
        base = signature_base(parsed.covered, parsed.params, parts)
        recovered = Account.recover_message(encode_defunct(text=base), signature=parsed.signature).lower()
        if recovered != parsed.address:
            raise StrongroomError("bad signature", code="signature_invalid")
        self.nonces.add(parsed.nonce)
        return parsed.address

    def _route(self, request: httpx.Request, signer: str) -> httpx.Response:
        segments = [unquote(s) for s in request.url.raw_path.decode().split("?")[0].split("/")[3:]]
        method = request.method
        if segments == ["operations"] and method == "POST":
            return self._create(request, signer)
        if segments == ["operations"] and method == "GET":
            return self._list(request, signer)
        op = self.operations.get(segments[1]) if len(segments) > 1 else None
        if op is None:
            return problem(404, "not_found", "unknown operation")
        if op.grantee != signer:
            return problem(403, "not_grantee", "not yours")
        rest = segments[2:]
        wait = request.url.params.get("wait")
        if not rest and method == "GET" and self.long_poll and wait is not None:
            self.waits.append(int(wait))
            if op.changes and op.status not in ("succeeded", "failed", "cancelled"):
                op.status = op.changes.pop(0)  # the change the request was held for (none left: the bound)
            return httpx.Response(200, json=op.body(), headers={"X-Wait-Applied": wait})
        if not rest and method == "GET":
            if op.polls_until_done > 0:
                op.polls_until_done -= 1
                if op.polls_until_done == 0:
                    op.status = "succeeded"
            return httpx.Response(200, json=op.body())
        if rest == ["cancel"] and method == "POST":
            if op.status in ("succeeded", "failed", "cancelled"):
                return problem(409, "conflict", "already finished")
            op.status = "cancelled"
            return httpx.Response(202, json={"id": op.id, "status": "cancelled"})
        if rest == ["access-log"]:  # pages of two events, like the real API's cursor
            after = int(request.url.params.get("after", "0"))
            page = self.events[after : after + 2]
            more = after + 2 < len(self.events)
            problems = [] if self.chain_valid else [f"batch {after + 1} is missing"]
            body = {"events": page, "chain_valid": self.chain_valid, "problems": problems}
            body["next_cursor"] = str(after + 2) if more else None
            return httpx.Response(200, json=body)
        if rest == ["artifacts"]:
            return httpx.Response(200, json=op.body()["artifacts"])
        if len(rest) == 2 and rest[0] == "artifacts":
            artifact = op.artifacts.get(rest[1])
            if artifact is None:
                return problem(404, "not_found", "unknown artifact")
            if method == "DELETE":
                del op.artifacts[rest[1]]
                return httpx.Response(204)
            return self._download(request, op, artifact)
        return problem(404, "not_found", "no route")

    def _create(self, request: httpx.Request, signer: str) -> httpx.Response:
        body = json.loads(request.content)
        if body["agent"] != "privacy-audit":
            detail = f"no agent named '{body['agent']}' on this server; available: privacy-audit"  # as the API says
            return problem(422, "agent_unknown", detail)
        keywrap.parse_public_key(body["encryption_public_key"])
        op_id = f"privacy-audit_{len(self.operations):026d}"
        self.add_operation(op_id, signer, body["encryption_public_key"])
        self.last_input = body["input"]
        return httpx.Response(
            202,
            json={"id": op_id, "status": "pending", "created_at": NOW, "expires_at": LATER},
            headers={"Location": f"/api/v1/operations/{op_id}"},
        )

    def _list(self, request: httpx.Request, signer: str) -> httpx.Response:
        mine = [o for o in reversed(self.operations.values()) if o.grantee == signer]
        status = request.url.params.get("status")
        if status:
            mine = [o for o in mine if o.status == status]
        start = int(request.url.params.get("cursor") or 0)
        limit = int(request.url.params.get("limit") or 50)
        page = mine[start : start + limit]
        rows = [{"id": o.id, "status": o.status, "created_at": NOW, "expires_at": LATER} for o in page]
        nxt = str(start + limit) if start + limit < len(mine) else None
        return httpx.Response(200, json={"operations": rows, "next_cursor": nxt})

    def _download(self, request: httpx.Request, op: FakeOperation, artifact: FakeArtifact) -> httpx.Response:
        meta = artifact.metadata(op.id)
        ticket = {k: meta[k] for k in ("size", "content_type", "checksum", "ciphertext_checksum", "encryption")}
        wants_json = "application/json" in request.headers.get("accept", "")
        if self.proxy:
            if wants_json and self.proxy_tickets:  # the ticket names the API's own artifact path; nothing is streamed
                return httpx.Response(200, json={"url": meta["download_url"], "expires_at": None, **ticket})
            self.downloads += 1
            return ranged(request, self.s3_objects[f"{op.id}/{artifact.name}"])
        url = f"{self.s3}/{op.id}/{artifact.name}?X-Amz-Signature=fake"
        if not wants_json:
            return httpx.Response(307, headers={"Location": url})
        return httpx.Response(200, json={"url": url, "expires_at": LATER, **ticket})

    def _s3(self, request: httpx.Request) -> httpx.Response:
        key = unquote(request.url.path.lstrip("/"))
        data = self.s3_objects.get(key)
        if data is None:
            return httpx.Response(404, content=b"<Error><Code>NoSuchKey</Code></Error>")
        if self.s3_truncate_once is not None:
            cut, self.s3_truncate_once = self.s3_truncate_once, None
            return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=DroppedStream(data[:cut]))
        return ranged(request, data)


def ranged(request: httpx.Request, data: bytes) -> httpx.Response:
    spec = request.headers.get("range")
    if not spec:
        return httpx.Response(200, content=data, headers={"Content-Type": "application/octet-stream"})
    first_s, _, last_s = spec.removeprefix("bytes=").partition("-")
    first, last = int(first_s), int(last_s) if last_s else len(data) - 1
    body = data[first : last + 1]
    return httpx.Response(
        206,
        content=body,
        headers={"Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(data)}"},
    )


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "about:blank", "title": code, "status": status, "code": code, "detail": detail},
        headers={"Content-Type": "application/problem+json", **(headers or {})},
    )


class DroppedStream(httpx.SyncByteStream):
    """A body that stops with a read error midway, like a connection reset."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset")
