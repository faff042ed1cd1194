"""The SDK against an in-memory API that checks real signatures and serves real ciphertext."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from client_fake_api import API, FakeApi, problem

from shared.crypto import cobblestone
from shared.errors import (
    AuthError,
    Conflict,
    Expired,
    IntegrityError,
    NotFound,
    NotGrantee,
    RateLimited,
    StrongroomError,
    Unavailable,
    ValidationFailed,
)
from strongroom.client import StrongroomClient, WaitTimeout
from strongroom.client.download import partial_path
from strongroom.client.errors import ProtocolError
from strongroom.client.identity import Identity, generate_identity

pytestmark = pytest.mark.unit

BIG = os.urandom(3 * cobblestone.CHUNK_SIZE + 1234)


@pytest.fixture
def identity() -> Identity:
    return generate_identity()


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(api: FakeApi, identity: Identity, sleeps: list[float]) -> Iterator[StrongroomClient]:
    with StrongroomClient(API, identity, transport=api.transport, sleep=sleeps.append) as c:
        yield c


def finished_op(api: FakeApi, identity: Identity) -> str:
    op = api.add_operation("privacy-audit_" + "a" * 26, identity.address, identity.encryption_public_key)
    op.status = "succeeded"
    api.add_artifact(op, "report.md", b"# report\nall good\n")
    api.add_artifact(op, "big.bin", BIG)
    return op.id


# --- operations ---


def test_create_sends_public_key_and_signed_body(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    created = client.create("privacy-audit", {"text": "hello"}, retention_days=3)
    assert created.status == "pending"
    assert api.operations[created.id].grantee == identity.address
    assert api.operations[created.id].public_key == identity.encryption_public_key
    assert api.last_input == {"text": "hello"}
    assert b'"retention_days":3' in api.requests[-1].content


def test_unknown_agent_is_validation_error_with_hint(client: StrongroomClient) -> None:
    with pytest.raises(ValidationFailed) as info:
        client.create("nope", {})
    assert info.value.code == "agent_unknown"
    assert info.value.detail == "no agent named 'nope' on this server; available: privacy-audit"  # said once


def test_wait_polls_with_backoff_until_terminal(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    op = api.add_operation("privacy-audit_" + "b" * 26, identity.address, identity.encryption_public_key)
    op.status, op.polls_until_done = "running", 4
    seen: list[str] = []
    done = client.wait(op.id, timeout=60, initial_interval=0.5, max_interval=2, on_poll=lambda o: seen.append(o.status))
    assert done.status == "succeeded"
    assert seen == ["running", "running", "running", "succeeded"]


def test_wait_long_polls_a_server_that_holds_requests(identity: Identity, sleeps: list[float]) -> None:
    """One held request per status change, no sleeping in between, and the bound never past the timeout."""
    api = FakeApi(long_poll=True)
    op = api.add_operation("privacy-audit_" + "e" * 26, identity.address, identity.encryption_public_key)
    op.changes = ["running", "succeeded"]
    seen: list[str] = []
    with StrongroomClient(API, identity, transport=api.transport, sleep=sleeps.append) as client:
        done = client.wait(op.id, timeout=20, on_poll=lambda o: seen.append(o.status))
    assert done.status == "succeeded"
    assert seen == ["running", "succeeded"]
    assert sleeps == []
    assert len(api.waits) == 2 and all(1 <= w <= 20 for w in api.waits)
    held = [r for r in api.requests if r.url.params.get("wait")]
    assert len(held) == 2 and all("signature" in r.headers for r in held)


def test_wait_asks_again_at_once_after_the_bound_but_backs_off_after_an_early_answer(
    identity: Identity, sleeps: list[float]
) -> None:
    """A held request that ran to its bound without a change is followed by the next at once; one that came back
    early without a change (a server shutting down) is followed by a backoff sleep first."""
    api = FakeApi(long_poll=True)
    op = api.add_operation("privacy-audit_" + "f" * 26, identity.address, identity.encryption_public_key)
    op.status = "running"
    now = [0.0]
    script = iter([("running", 0), ("running", "bound"), ("running", 0), ("succeeded", 0)])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("wait"):
            op.status, took = next(script)
            now[0] += int(request.url.params["wait"]) if took == "bound" else 0.01
        return api.handle(request)

    with StrongroomClient(
        API, identity, transport=httpx.MockTransport(handle), sleep=sleeps.append, clock=lambda: now[0]
    ) as client:
        done = client.wait(op.id, timeout=600, initial_interval=1)
    assert done.status == "succeeded"
    assert api.waits == [30, 30, 30, 30]
    assert len(sleeps) == 1  # only after the third answer: early and unchanged


def test_wait_without_long_poll_polls(identity: Identity, sleeps: list[float]) -> None:
    api = FakeApi(long_poll=True)
    op = api.add_operation("privacy-audit_" + "g" * 26, identity.address, identity.encryption_public_key)
    op.status, op.polls_until_done = "running", 3
    with StrongroomClient(API, identity, transport=api.transport, sleep=sleeps.append) as client:
        assert client.wait(op.id, timeout=60, long_poll=False).status == "succeeded"
    assert api.waits == [] and len(sleeps) == 2


def test_get_with_wait_sends_the_parameter(identity: Identity) -> None:
    api = FakeApi(long_poll=True)
    op = api.add_operation("privacy-audit_" + "h" * 26, identity.address, identity.encryption_public_key)
    op.changes = ["running"]
    with StrongroomClient(API, identity, transport=api.transport) as client:
        assert client.get(op.id, wait=7).status == "running"
        assert client.get(op.id).status == "running"
    assert api.waits == [7]


def test_wait_backoff_grows_with_jitter_and_is_capped(
    client: StrongroomClient, api: FakeApi, identity: Identity, sleeps: list[float]
) -> None:
    op = api.add_operation("privacy-audit_" + "c" * 26, identity.address, identity.encryption_public_key)
    op.status, op.polls_until_done = "running", 7
    client.wait(op.id, timeout=600, initial_interval=1, max_interval=4)
    caps = [1, 2, 4, 4, 4, 4]
    assert len(sleeps) == len(caps)
    for slept, cap in zip(sleeps, caps, strict=True):
        assert cap / 2 <= slept <= cap


def test_wait_times_out(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    op = api.add_operation("privacy-audit_" + "d" * 26, identity.address, identity.encryption_public_key)
    op.status = "running"
    with pytest.raises(WaitTimeout, match="still running"):
        client.wait(op.id, timeout=0)


def test_list_and_iterate_all_pages(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    other = generate_identity()
    for i in range(5):
        api.add_operation(f"privacy-audit_{i:026d}", identity.address, identity.encryption_public_key)
    api.add_operation("privacy-audit_" + "z" * 26, other.address, other.encryption_public_key)
    page = client.list(limit=2)
    assert [o.id for o in page.operations] == [f"privacy-audit_{i:026d}" for i in (4, 3)]
    assert page.next_cursor
    every = [o.id for o in client.iter_operations(page_size=2)]
    assert every == [f"privacy-audit_{i:026d}" for i in (4, 3, 2, 1, 0)]
    api.operations["privacy-audit_" + "0" * 26].status = "failed"
    assert [o.id for o in client.list(status="failed").operations] == ["privacy-audit_" + "0" * 26]


def test_cancel_and_conflict(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    op = api.add_operation("privacy-audit_" + "e" * 26, identity.address, identity.encryption_public_key)
    assert client.cancel(op.id)["status"] == "cancelled"
    with pytest.raises(Conflict, match="already finished"):
        client.cancel(op.id)


def test_access_log_follows_every_page(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    op_id = finished_op(api, identity)
    api.events = [{"action": f"artifact.url.{i}", "result": "allowed"} for i in range(5)]
    log = client.access_log(op_id)
    assert [e["action"] for e in log.events] == [f"artifact.url.{i}" for i in range(5)]  # three pages of two
    assert log.chain_verified is True
    assert log.problems == []
    api.chain_valid = False
    broken = client.access_log(op_id)
    assert broken.chain_verified is False
    assert broken.problems == ["batch 1 is missing", "batch 3 is missing", "batch 5 is missing"]  # every page's


def test_operation_ids_and_names_are_percent_encoded_in_signed_urls(
    client: StrongroomClient, api: FakeApi, identity: Identity
) -> None:
    op_id = finished_op(api, identity)
    op = api.operations[op_id]
    api.add_artifact(op, "a b/ü?.txt", b"odd name")
    client.delete(op_id, "a b/ü?.txt")  # the fake verifies the signature over the raw, encoded path
    assert "a b/ü?.txt" not in op.artifacts
    assert b"/artifacts/a%20b%2F%C3%BC%3F.txt" in api.requests[-1].url.raw_path


# --- error mapping and retries ---


@pytest.mark.parametrize(
    ("status", "code", "cls", "hint"),
    [
        (401, "signature_expired", AuthError, "check your clock"),
        (401, "nonce_replayed", AuthError, "fresh signature"),
        (403, "not_grantee", NotGrantee, "not the grantee"),
        (404, "expired", Expired, "retention period"),
        (404, "not_found", NotFound, "no such operation"),
        (409, "conflict", Conflict, "already finished"),
        (422, "input_too_large", ValidationFailed, "larger than the server accepts"),
        (502, "storage_error", StrongroomError, "storage backend"),
        (418, "teapot", StrongroomError, "short and stout"),
    ],
)
def test_problem_codes_become_typed_errors_with_hints(
    client: StrongroomClient, api: FakeApi, status: int, code: str, cls: type[StrongroomError], hint: str
) -> None:
    api.fail_next.append(problem(status, code, "short and stout"))
    with pytest.raises(cls) as info:
        client.get("privacy-audit_" + "f" * 26)
    assert info.value.code == code
    assert hint in info.value.detail


def test_rate_limited_retries_honouring_retry_after(
    client: StrongroomClient, api: FakeApi, identity: Identity, sleeps: list[float]
) -> None:
    op_id = finished_op(api, identity)
    api.fail_next += [problem(429, "rate_limited", "slow", {"Retry-After": "2"})] * 2
    assert client.get(op_id).status == "succeeded"
    assert sleeps == [2.0, 2.0]
    # each retry carries a fresh nonce: three distinct signatures were sent
    assert len({r.headers["signature"] for r in api.requests}) == 3


def test_rate_limited_gives_up_after_bounded_retries(
    client: StrongroomClient, api: FakeApi, sleeps: list[float]
) -> None:
    api.fail_next += [problem(429, "rate_limited", "slow", {"Retry-After": "1"})] * 10
    with pytest.raises(RateLimited) as info:
        client.get("privacy-audit_" + "f" * 26)
    assert info.value.retry_after == 1
    assert len(sleeps) == client.max_retries


def test_retry_after_longer_than_the_cap_is_not_waited(
    client: StrongroomClient, api: FakeApi, sleeps: list[float]
) -> None:
    api.fail_next.append(problem(429, "rate_limited", "slow", {"Retry-After": "3600"}))
    with pytest.raises(RateLimited):
        client.get("privacy-audit_" + "f" * 26)
    assert sleeps == []


def test_post_is_not_retried_on_503(client: StrongroomClient, api: FakeApi, sleeps: list[float]) -> None:
    api.fail_next.append(problem(503, "unavailable", "redis down"))
    with pytest.raises(Unavailable):
        client.create("privacy-audit", {})
    assert sleeps == []


def test_unreachable_api_is_a_clear_unavailable(identity: Identity) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with (
        StrongroomClient(API, identity, transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(Unavailable) as info,
    ):
        client.get("x")
    assert info.value.code == "api_unreachable"
    assert "is it running" in info.value.detail


def test_someone_elses_operation_is_not_grantee(api: FakeApi, identity: Identity) -> None:
    op_id = finished_op(api, identity)
    with StrongroomClient(API, generate_identity(), transport=api.transport) as intruder, pytest.raises(NotGrantee):
        intruder.get(op_id)


def test_malformed_success_body_is_protocol_error(client: StrongroomClient, api: FakeApi) -> None:
    api.fail_next.append(httpx.Response(200, json={"id": "x"}))
    with pytest.raises(ProtocolError):
        client.get("x")


# --- downloads ---


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("proxy", [False, True], ids=["presigned", "proxy"])
def test_download_verifies_and_decrypts(identity: Identity, tmp_path: Path, proxy: bool) -> None:
    api = FakeApi(proxy=proxy)
    op_id = finished_op(api, identity)
    with StrongroomClient(API, identity, transport=api.transport) as client:
        seen: list[tuple[int, int]] = []
        result = client.download(op_id, "big.bin", tmp_path / "big.bin", progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert result.checksum == "sha256:" + sha(BIG)
    assert seen[-1][0] == seen[-1][1] == cobblestone.ciphertext_size(len(BIG))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]  # no temp files left
    if not proxy:
        s3 = [r for r in api.requests if r.url.host == "s3.test"]
        assert s3 and all("signature" not in r.headers for r in s3)  # presigned URLs are never ERC-8128 signed


def test_proxy_mode_ticket_is_json_and_bytes_are_streamed_once(identity: Identity, tmp_path: Path) -> None:
    """Review finding 2: the ticket GET must not open a byte stream (the API would record a download that never
    happened); the one byte GET asks for bytes, not JSON, and fetch_range streams only the chunks it needs."""
    api = FakeApi(proxy=True)
    op_id = finished_op(api, identity)
    with StrongroomClient(API, identity, transport=api.transport) as client:
        ticket = client.ticket(op_id, "big.bin")
        assert ticket.url is None and api.downloads == 0
        client.download(op_id, "big.bin", tmp_path / "big.bin")
        assert api.downloads == 1
        assert client.fetch_range(op_id, "big.bin", 10, 99) == BIG[10:100]
        assert api.downloads == 2
    assert (tmp_path / "big.bin").read_bytes() == BIG
    artifact_gets = [r for r in api.requests if r.url.path.endswith("/artifacts/big.bin")]
    ticket_get, byte_get = "application/json", "application/octet-stream"
    # ticket(); download: ticket + one stream; fetch_range: ticket + one ranged stream (one Cobblestone chunk)
    assert [r.headers["accept"] for r in artifact_gets] == [ticket_get, ticket_get, byte_get, ticket_get, byte_get]
    assert all("signature" in r.headers for r in artifact_gets)


def test_older_proxy_api_that_streams_on_the_ticket_request_still_works(identity: Identity, tmp_path: Path) -> None:
    api = FakeApi(proxy=True, proxy_tickets=False)
    op_id = finished_op(api, identity)
    with StrongroomClient(API, identity, transport=api.transport) as client:
        client.download(op_id, "big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == BIG


@pytest.mark.parametrize("s3", ["http://api.test-s3", "http://api.test.storage.example", "http://api.test:9000"])
def test_presigned_url_sharing_the_api_url_prefix_is_not_proxy(identity: Identity, tmp_path: Path, s3: str) -> None:
    """Review finding 2: only a URL under the API at a path boundary is proxy delivery; a storage host whose name
    merely starts with the API's is fetched unsigned, like every presigned URL."""
    api = FakeApi(s3=s3)
    op_id = finished_op(api, identity)
    with StrongroomClient(API, identity, transport=api.transport) as client:
        assert client.ticket(op_id, "big.bin").url is not None
        client.download(op_id, "big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == BIG
    storage = [r for r in api.requests if str(r.url).startswith(s3 + "/")]
    assert storage and all("signature" not in r.headers for r in storage)


def test_swapped_ciphertext_is_rejected_and_leaves_nothing(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    op_id = finished_op(api, identity)
    objs = api.s3_objects
    objs[f"{op_id}/report.md"], objs[f"{op_id}/big.bin"] = objs[f"{op_id}/big.bin"], objs[f"{op_id}/report.md"]
    for name in ("report.md", "big.bin"):
        with pytest.raises(IntegrityError):
            client.download(op_id, name, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_ciphertext_moved_with_matching_metadata_fails_the_context_binding(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    """Even metadata that vouches for a foreign object cannot make it decrypt: wraps are bound to op and name."""
    op_id = finished_op(api, identity)
    op = api.operations[op_id]
    op.artifacts["big.bin"] = op.artifacts["report.md"]  # metadata + wrap + object of another artifact
    api.s3_objects[f"{op_id}/big.bin"] = api.s3_objects[f"{op_id}/report.md"]
    with pytest.raises(IntegrityError, match="another artifact"):
        client.download(op_id, "big.bin", tmp_path / "big.bin")
    assert list(tmp_path.iterdir()) == []


def test_resume_after_interrupted_download(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    op_id = finished_op(api, identity)
    dest = tmp_path / "big.bin"
    api.s3_truncate_once = 20_000
    with pytest.raises(StrongroomError) as info:
        client.download(op_id, "big.bin", dest)
    assert info.value.code == "download_incomplete"
    assert not dest.exists()
    ticket = client.ticket(op_id, "big.bin")
    assert partial_path(dest, ticket).stat().st_size == 20_000
    result = client.download(op_id, "big.bin", dest)
    assert result.resumed_from == 20_000
    assert dest.read_bytes() == BIG
    last_s3 = [r for r in api.requests if r.url.host == "s3.test"][-1]
    assert last_s3.headers["range"] == "bytes=20000-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_stale_partial_of_bad_bytes_is_discarded(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    op_id = finished_op(api, identity)
    dest = tmp_path / "big.bin"
    partial_path(dest, client.ticket(op_id, "big.bin")).write_bytes(b"\0" * 1000)  # corrupt prefix
    with pytest.raises(IntegrityError):
        client.download(op_id, "big.bin", dest)
    assert list(tmp_path.iterdir()) == []
    client.download(op_id, "big.bin", dest)  # the next attempt starts clean
    assert dest.read_bytes() == BIG


@pytest.mark.parametrize("proxy", [False, True], ids=["presigned", "proxy"])
@pytest.mark.parametrize(
    ("start", "end"), [(0, 0), (10, 99), (cobblestone.CHUNK_SIZE - 5, cobblestone.CHUNK_SIZE + 5), (0, len(BIG) - 1)]
)
def test_fetch_range_matches_plaintext_slice(identity: Identity, proxy: bool, start: int, end: int) -> None:
    api = FakeApi(proxy=proxy)
    op_id = finished_op(api, identity)
    with StrongroomClient(API, identity, transport=api.transport) as client:
        assert client.fetch_range(op_id, "big.bin", start, end) == BIG[start : end + 1]


def test_fetch_range_outside_artifact(client: StrongroomClient, api: FakeApi, identity: Identity) -> None:
    op_id = finished_op(api, identity)
    with pytest.raises(ValidationFailed):
        client.fetch_range(op_id, "report.md", 5, 10_000)


def test_download_of_someone_elses_wrap_fails(api: FakeApi, identity: Identity, tmp_path: Path) -> None:
    op_id = finished_op(api, identity)
    api.operations[op_id].grantee = (other := generate_identity()).address
    with StrongroomClient(API, other, transport=api.transport) as client, pytest.raises(IntegrityError):
        client.download(op_id, "report.md", tmp_path / "r.md")
    assert list(tmp_path.iterdir()) == []
