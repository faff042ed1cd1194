"""Grants and quotas against the running stack: `strongroom api` + `strongroom worker`, Valkey, SeaweedFS.

One grants file drives both processes; each test rewrites it (the way a ConfigMap update does) and waits for the
reload, then checks the refusal codes clients see, the quotas under concurrent load, and what cleanup deletes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import audit_log, layout
from shared.auth.signer import sign_request
from shared.errors import StrongroomError
from shared.grants import OPEN_IN_PRODUCTION, StaticGrants
from shared.settings import Settings
from strongroom.client import StrongroomClient
from strongroom.client.identity import Identity, generate_identity, save_identity
from tests.agents.harness import agents_env
from worker_service.pipeline.audit import persist_audit_events
from worker_service.pipeline.retention import cleanup_expired
from worker_service.services import Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RELOAD = 1.5  # StaticGrants re-checks the file at most once a second


def grant(identity: Identity, agents: str = "['*']", extra: str = "") -> str:
    return f"  - {{address: '{identity.address}', agents: {agents}{extra}}}\n"


def write_grants(path: Path, *entries: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("grants:\n" + "".join(entries))
    os.replace(tmp, path)
    time.sleep(RELOAD)


@pytest.fixture(scope="module")
def people() -> dict[str, Identity]:
    names = ("owner", "stranger", "lapsed", "busy", "hoarder", "viewer", "hourly", "idle")
    return {name: generate_identity() for name in names}


@pytest.fixture(scope="module")
def grants_file(tmp_path_factory: pytest.TempPathFactory, people: dict[str, Identity]) -> Path:
    path = tmp_path_factory.mktemp("grants") / "grants.yaml"
    path.write_text("grants:\n" + grant(people["owner"], "[privacy-audit, slow]"))
    return path


@pytest.fixture(scope="module")
def stack(
    api_factory: Callable[..., Any], worker_factory: Callable[..., Any], grants_file: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        "STRONGROOM_GRANTS_SOURCE": "static",
        "STRONGROOM_GRANTS_FILE": str(grants_file),
        "STRONGROOM_AGENTS": agents_env(slow=["slow", "3"], big=["big", "5000"]),
        "STRONGROOM_RATE_LIMIT_PER_MINUTE": "0",
    }
    api = api_factory(**env)
    worker = worker_factory(concurrency=4, **env)
    yield api.url, env
    worker.stop()
    api.stop()


def client(url: str, who: Identity) -> StrongroomClient:
    return StrongroomClient(url, who)


def refusal(action: Callable[[], Any]) -> StrongroomError:
    with pytest.raises(StrongroomError) as caught:
        action()
    return caught.value


def raw_create(url: str, who: Identity, agent: str) -> httpx.Response:
    """A signed create sent as is, so the test sees the status and headers the server answered (not the SDK's)."""
    body = json.dumps({"agent": agent, "input": {}, "encryption_public_key": who.encryption_public_key}).encode()
    target = f"{url}/api/v1/operations"
    headers = {**sign_request(who.account, "POST", target, body), "Content-Type": "application/json"}
    with httpx.Client(timeout=60) as http:
        return http.post(target, content=body, headers=headers)


def test_each_refusal_has_its_code(
    stack: tuple[str, dict[str, str]], people: dict[str, Identity], grants_file: Path
) -> None:
    url, _ = stack
    write_grants(
        grants_file,
        grant(people["owner"], "[privacy-audit, slow]"),
        grant(people["lapsed"], "['*']", ", expires_at: 2020-01-01T00:00:00Z"),
    )
    with client(url, people["stranger"]) as c:
        error = refusal(lambda: c.create("privacy-audit", {"text": "x"}))
        assert (error.status, error.code) == (403, "no_grant")
        view = c.grant()
        assert view.status == "none"
    with client(url, people["owner"]) as c:
        error = refusal(lambda: c.create("big", {}))
        assert (error.status, error.code) == (403, "agent_not_granted")
        view = c.grant()
        assert (view.status, view.agents) == ("active", ["privacy-audit", "slow"])
    with client(url, people["lapsed"]) as c:
        error = refusal(lambda: c.create("privacy-audit", {"text": "x"}))
        assert (error.status, error.code) == (403, "grant_expired")


def test_a_quota_refusal_is_429_naming_the_quota_with_retry_after_only_when_time_helps(
    stack: tuple[str, dict[str, str]], people: dict[str, Identity], grants_file: Path
) -> None:
    url, _ = stack
    write_grants(
        grants_file,
        grant(people["hourly"], "[slow]", ", quotas: {operations_per_hour: 1}"),
        grant(people["idle"], "[slow]", ", quotas: {concurrent_operations: 0}"),
    )
    first = raw_create(url, people["hourly"], "slow")
    assert first.status_code == 202, first.text
    hourly = raw_create(url, people["hourly"], "slow")
    assert hourly.status_code == 429, hourly.text
    assert hourly.json()["code"] == "quota_exceeded" and "operations_per_hour" in hourly.json()["detail"]
    assert 1 <= int(hourly.headers["Retry-After"]) <= 3600  # until the hour's oldest create leaves the window
    concurrent = raw_create(url, people["idle"], "slow")
    assert concurrent.status_code == 429, concurrent.text
    assert concurrent.json()["code"] == "quota_exceeded" and "concurrent_operations" in concurrent.json()["detail"]
    assert "Retry-After" not in concurrent.headers  # only an operation ending frees a slot, not time
    with client(url, people["hourly"]) as c:
        error = refusal(lambda: c.create("slow", {}))
        assert (error.status, error.code) == (429, "quota_exceeded")
        assert [op.id for op in c.list().operations] == [first.json()["id"]]
        assert c.wait(first.json()["id"], timeout=120).status == "succeeded"


def test_a_quota_of_two_concurrent_operations_holds_under_twenty_creates(
    stack: tuple[str, dict[str, str]], people: dict[str, Identity], grants_file: Path
) -> None:
    url, _ = stack
    write_grants(grants_file, grant(people["busy"], "[slow]", ", quotas: {concurrent_operations: 2}"))
    accepted: list[str] = []
    codes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def create() -> None:
        with client(url, people["busy"]) as c:
            start.wait()
            try:
                created = c.create("slow", {})
            except StrongroomError as exc:
                with lock:
                    codes.append(exc.code)
                return
            with lock:
                accepted.append(created.id)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 2
    assert codes == ["quota_exceeded"] * 18
    with client(url, people["busy"]) as c:
        for operation_id in accepted:
            assert c.wait(operation_id, timeout=120).status == "succeeded"
        again = c.create("slow", {})  # the slots are free once both finished
        assert c.wait(again.id, timeout=120).status == "succeeded"
        assert sorted(op.id for op in c.list().operations) == sorted([*accepted, again.id])  # refusals stored nothing


def test_the_stored_bytes_quota_stops_an_operation_that_would_cross_it(
    stack: tuple[str, dict[str, str]], people: dict[str, Identity], grants_file: Path, settings: Settings
) -> None:
    url, _ = stack
    write_grants(grants_file, grant(people["hoarder"], "[big]", ", quotas: {stored_bytes: 4000}"))
    with client(url, people["hoarder"]) as c:
        created = c.create("big", {})
        done = c.wait(created.id, timeout=120)
        assert done.status == "failed"
        assert done.result is not None and done.result.summary.startswith("quota_exceeded")
        assert done.artifacts.count == 0
        view = c.grant()
        assert view.usage is not None and view.usage.stored_bytes == 0
    services = Services.from_settings(Settings.from_env({**os.environ, **_env(settings)}))
    stored = [i.key for i in services.store.list(layout.artifacts_prefix(created.id))]
    assert stored == []


def test_revoking_a_grant_cuts_access_and_cleanup_deletes_the_operations(
    stack: tuple[str, dict[str, str]], people: dict[str, Identity], grants_file: Path, settings: Settings
) -> None:
    url, env = stack
    owner = people["owner"]
    write_grants(grants_file, grant(owner, "[privacy-audit]"))
    with client(url, owner) as c:
        created = c.create("privacy-audit", {"text": "mail me at a@b.example"})
        other = c.create("privacy-audit", {"text": "call 555-0100"})
        assert c.wait(created.id, timeout=120).status == "succeeded"
        assert c.wait(other.id, timeout=120).status == "succeeded"

        (grants_file.with_suffix(".tmp")).write_text("grants: [")  # a broken file keeps the last good grants
        os.replace(grants_file.with_suffix(".tmp"), grants_file)
        time.sleep(RELOAD)
        assert c.get(created.id).status == "succeeded"

        write_grants(grants_file, grant(people["stranger"]))
        error = refusal(lambda: c.get(created.id))
        assert (error.status, error.code) == (403, "grant_revoked")
        error = refusal(lambda: c.list())
        assert error.code == "grant_revoked"

    worker_settings = Settings.from_env({**os.environ, **_env(settings), **env})
    services = Services.from_settings(worker_settings)
    assert isinstance(services.grants, StaticGrants)
    cleanup_expired(services)
    for operation_id in (created.id, other.id):
        assert list(services.store.list(layout.operation_prefix(operation_id))) == []
    assert list(services.store.list(layout.grantee_prefix(owner.address))) == []
    while persist_audit_events(services):
        pass
    expired = {
        event.operation_id: event.reason
        for batch in audit_log.iter_batches(services.records, None)
        for event in batch.events
        if event.action == "operation.expired"
    }
    assert expired.get(created.id) == expired.get(other.id) == "grant_revoked"


def _env(settings: Settings) -> dict[str, str]:
    """The stack's connection settings as environment variables (for building worker services in the test)."""
    return {
        "REDIS_URL": settings.redis_url,
        "STRONGROOM_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "STRONGROOM_S3_BUCKET": settings.s3_bucket,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_access_key or "",
        "STRONGROOM_KEYRING": settings.keyring_json() or "",
        "STRONGROOM_ENV": "development",
    }


def test_whoami_prints_the_grant_and_its_usage(
    stack: tuple[str, dict[str, str]], people: dict[str, Identity], grants_file: Path, tmp_path: Path
) -> None:
    url, _ = stack
    who = people["viewer"]
    write_grants(grants_file, grant(who, "[slow]", ", quotas: {concurrent_operations: 2, stored_bytes: 100}"))
    identity_file = tmp_path / "identity.json"
    save_identity(who, identity_file)
    out = subprocess.run(
        [sys.executable, "-m", "strongroom", "client", "whoami", "--api", url, "--identity", str(identity_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"{who.address}  grant: active (static)" in out.stdout
    assert "agents: slow" in out.stdout
    assert "concurrent_operations: 0 / 2" in out.stdout
    assert "stored_bytes: 0 / 100" in out.stdout
    assert "operations_per_hour: 0 / unlimited" in out.stdout


def test_open_in_production_is_a_warning_in_the_api_and_worker_logs(
    api_factory: Callable[..., Any], worker_factory: Callable[..., Any]
) -> None:
    env = {"STRONGROOM_ENV": "production", "STRONGROOM_GRANTS_SOURCE": "open"}
    api = api_factory(**env)
    worker = worker_factory(**env)
    try:
        for handle in (api, worker):
            warnings = [json.loads(line) for line in handle.logs().splitlines() if OPEN_IN_PRODUCTION in line]
            assert [(w["level"], w["process"]) for w in warnings] == [("warning", handle.name.split("-")[0])]
    finally:
        worker.stop()
        api.stop()
